"""`kbert.training.precision`: the dtype policy chosen from (injected) CPU flags, GPUs and TPUs."""

import warnings

import pytest

from kbert.training.precision import (
    EmulatedPrecisionWarning,
    Hardware,
    detect_hardware,
    parse_cpuinfo,
    resolve_mixed_precision,
)

# Abridged /proc/cpuinfo of a 2-core AMD Zen 4 VM (the flags line as the kernel writes it).
ZEN4_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni
bogomips\t: 5192.26

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni
"""
ZEN3 = Hardware("AMD EPYC 7R13", frozenset({"avx2", "fma", "sse2"}))
ZEN4 = Hardware("AMD EPYC 9R14", frozenset({"avx2", "avx512f", "avx512_bf16"}))
SAPPHIRE_RAPIDS = Hardware("Intel Xeon 8488C", frozenset({"avx512f", "amx_tile", "amx_bf16"}))


def test_parse_cpuinfo_reads_the_first_processor():
    model, flags = parse_cpuinfo(ZEN4_CPUINFO)
    assert model == "AMD EPYC 9R14 96-Core Processor"
    assert {"avx512_bf16", "avx512f", "avx2"} <= flags and "amx_bf16" not in flags
    assert parse_cpuinfo("processor\t: 0\n") == ("unknown", frozenset())


def test_detect_hardware_reads_the_given_cpuinfo(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(ZEN4_CPUINFO)
    hardware = detect_hardware(cpuinfo_path=str(path))
    assert hardware.cpu_model == "AMD EPYC 9R14 96-Core Processor"
    assert "avx512_bf16" in hardware.cpu_flags
    missing = detect_hardware(cpuinfo_path=str(tmp_path / "absent"))
    assert (missing.cpu_model, missing.cpu_flags) == ("unknown", frozenset())


@pytest.mark.parametrize(
    ("hardware", "policy"),
    [
        (ZEN3, "float32"),
        (ZEN4, "mixed_bfloat16"),
        (SAPPHIRE_RAPIDS, "mixed_bfloat16"),
        (Hardware(), "float32"),  # no /proc/cpuinfo (not Linux)
        (Hardware(gpu_compute_capabilities=((8, 0),)), "mixed_bfloat16"),  # A100
        (Hardware(gpu_compute_capabilities=((9, 0), (7, 5))), "float32"),  # one T4 among them
        (Hardware(cpu_flags=ZEN4.cpu_flags, gpu_compute_capabilities=((7, 0),)), "float32"),
        (Hardware(cpu_flags=ZEN3.cpu_flags, tpu=True), "mixed_bfloat16"),
    ],
)
def test_auto_picks_bfloat16_only_where_native(hardware, policy):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_mixed_precision("auto", hardware) == policy
        assert resolve_mixed_precision("none", hardware) == "float32"


def test_forcing_bfloat16_on_an_emulating_cpu_warns_once_naming_it():
    with pytest.warns(EmulatedPrecisionWarning) as record:
        assert resolve_mixed_precision("mixed_bfloat16", ZEN3) == "mixed_bfloat16"
    assert len(record) == 1
    message = str(record[0].message)
    assert "\n" not in message
    assert "mixed_bfloat16 on CPU AMD EPYC 7R13 (avx512_bf16: no, amx_bf16: no)" in message
    with pytest.warns(EmulatedPrecisionWarning, match="float16 is emulated"):
        resolve_mixed_precision("mixed_float16", ZEN4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_mixed_precision("mixed_bfloat16", ZEN4) == "mixed_bfloat16"
        assert resolve_mixed_precision("mixed_float16", Hardware(gpu_compute_capabilities=((7, 0),))) == "mixed_float16"


def test_unknown_mode_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"mixed_precision='bf16' is not one of \('auto'"):
        resolve_mixed_precision("bf16", ZEN4)

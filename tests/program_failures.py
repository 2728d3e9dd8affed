"""Runs a kbert program (`trainers.pretrain`, `trainers.finetune`) on several failing command
lines in one process.

Each case would otherwise pay for its own Python + TensorFlow start (~10 s on
2 cores). The program's code path is the same as from the shell, minus
`absl.app.run`: flags are parsed by the program's own `_parse_flags` where it
has one, else by its `FLAGS`. The tests still run one failing case per program
as a real process to check the console.

  python -m tests.program_failures trainers.pretrain '[["--model_dir=x", "--sequence_length=4"], ...]'

prints a JSON list of [SystemExit's code (the `error:` message) or 0, everything printed] per case.
"""

import contextlib
import importlib
import io
import json
import sys


def run(program, argv):
    """(SystemExit's code, or 0 if main returned; what was printed) for one command line."""
    program.FLAGS.unparse_flags()
    parse = getattr(program, "_parse_flags", program.FLAGS)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        try:
            program.main(parse([program.__name__, *argv]))
        except SystemExit as e:
            return e.code, printed.getvalue()
    return 0, printed.getvalue()


if __name__ == "__main__":
    module = importlib.import_module(sys.argv[1])
    print(json.dumps([run(module, case) for case in json.loads(sys.argv[2])]))

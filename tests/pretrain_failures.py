"""Runs `trainers.pretrain` on several failing command lines in one process.

Each case would otherwise pay for its own Python + TensorFlow start (~10 s on
2 cores). The program's code path is the same as from the shell, minus
`absl.app.run` (flags are parsed by the program's own `_parse_flags`);
`tests/test_pretrain_program.py` still runs a failing case as a real process
to check the console.

  python -m tests.pretrain_failures '[["--model_dir=x", "--sequence_length=4"], ...]'

prints a JSON list of [exit status or message, everything printed] per case.
"""

import contextlib
import io
import json
import sys

from trainers import pretrain


def run(argv):
    """(SystemExit's code, or 0 if main returned; what was printed) for one command line."""
    pretrain.FLAGS.unparse_flags()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        try:
            pretrain.main(pretrain._parse_flags(["pretrain", *argv]))
        except SystemExit as e:
            return e.code, printed.getvalue()
    return 0, printed.getvalue()


if __name__ == "__main__":
    print(json.dumps([run(case) for case in json.loads(sys.argv[1])]))

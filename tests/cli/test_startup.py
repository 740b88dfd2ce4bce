"""The command starts light: help, version and usage errors import neither torch nor the numeric stack,
and the package's public names load on first use."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import moekit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ("torch", "numpy", "scipy", "sklearn", "pyarrow", "pandas", "matplotlib", "tqdm")


def _loaded_after(code: str) -> list:
    """Run code in a fresh interpreter; the heavy modules it left in sys.modules."""
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return eval(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["fit", "--help"], ["predict", "--help"],
                                  ["evaluate", "--help"], ["report", "--help"], ["info", "--help"], ["demo", "--help"],
                                  ["summary", "--help"]])
def test_help_and_version_import_no_torch(argv):
    code = f"import moekit.cli\ntry:\n    moekit.cli.main({argv!r})\nexcept SystemExit:\n    pass"
    assert _loaded_after(code) == []


def test_usage_errors_import_no_torch():
    code = "import moekit.cli\nassert moekit.cli.main(['fit', 'x.csv', '--model', 'svm', '-o', 'm']) == 2\n" \
           "assert moekit.cli.main([]) == 2"
    assert _loaded_after(code) == []


def test_python_dash_m_help_imports_no_torch():
    code = ("import runpy\nsys.argv = ['moekit', '--help']\ntry:\n    runpy.run_module('moekit', run_name='__main__')\n"
            "except SystemExit:\n    pass")
    assert _loaded_after(code) == []


def test_import_moekit_is_light_and_a_public_name_loads_its_module():
    assert _loaded_after("import moekit\nassert moekit.__version__") == []
    assert "torch" in _loaded_after("import moekit\nmoekit.MoERegressor")


def test_public_names():
    assert moekit.__all__ == sorted(moekit.__all__) and len(moekit.__all__) == len(set(moekit.__all__))
    assert set(moekit.__all__) <= set(dir(moekit))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no public name comes through a deprecated shim
        for name in moekit.__all__:
            assert getattr(moekit, name) is not None
    from moekit.estimators import MoERegressor
    from moekit.io import load

    assert moekit.MoERegressor is MoERegressor and moekit.load is load
    with pytest.raises(AttributeError, match="module 'moekit' has no attribute 'nope'"):
        moekit.nope  # noqa: B018
    from moekit import MoEClassifier  # noqa: F401 - 'from moekit import NAME' goes through __getattr__ too


def test_commands_import_only_what_they_use(tmp_path):
    """fit, predict, evaluate and info never load matplotlib (only report and demo draw)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    (tmp_path / "t.csv").write_text("x,y\n" + "".join(f"{a!r},{2 * a!r}\n" for a in x.tolist()))
    model = str(tmp_path / "m.moekit")
    data = str(tmp_path / "t.csv")
    for argv in (["fit", data, "-t", "y", "--max-iter", "5", "-q", "-o", model], ["info", model],
                 ["predict", model, data, "-q", "-o", str(tmp_path / "p.csv")], ["evaluate", model, data]):
        loaded = _loaded_after(f"import moekit.cli\nassert moekit.cli.main({argv!r}) == 0")
        assert "matplotlib" not in loaded, argv
        assert "torch" in loaded  # the probe did run the command


def test_loading_a_model_file_does_not_import_the_compiler(tmp_path):
    """Entering a torch dispatch mode imports torch._dynamo (about 1 s idle); the model files' allocation budget
    once did so for every command that loads a model (info, predict, evaluate, report)."""
    rng = np.random.default_rng(0)
    (tmp_path / "t.csv").write_text("x,y\n" + "".join(f"{a!r},{2 * a!r}\n" for a in rng.normal(size=40).tolist()))
    model = str(tmp_path / "m.moekit")
    code = (f"import moekit.cli\nassert moekit.cli.main(['fit', {str(tmp_path / 't.csv')!r}, '-t', 'y', '-q', "
            f"'--max-iter', '5', '-o', {model!r}]) == 0\nassert moekit.cli.main(['info', {model!r}]) == 0\n"
            "print(sorted(m for m in ('torch._dynamo',) if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", "import sys\n" + code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"

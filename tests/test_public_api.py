import importlib
import inspect
import pkgutil

import regzoo


def test_every_public_name_has_a_docstring():
    missing = []
    for name in regzoo.__all__:
        obj = getattr(regzoo, name)
        if isinstance(obj, regzoo.Registry):
            assert obj.contract, f"registry {name} states no contract"
            continue
        if not (inspect.getdoc(obj) or "").strip():
            missing.append(name)
    assert not missing, f"public names without docstrings: {missing}"


def test_public_classes_document_their_public_methods():
    missing = []
    for name in regzoo.__all__:
        obj = getattr(regzoo, name)
        if inspect.isclass(obj) and obj.__module__.startswith("regzoo"):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not inspect.isfunction(member):
                    continue
                if not (inspect.getdoc(member) or "").strip():
                    missing.append(f"{name}.{attr}")
    assert not missing, f"public methods without docstrings: {missing}"


def _import_every_submodule() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(regzoo.__path__, "regzoo."):
        if info.name.endswith("__main__"):
            continue  # runs the CLI
        importlib.import_module(info.name)
        names.append(info.name)
    return names


def test_public_names_stay_what_the_docs_say_after_every_submodule_is_imported():
    # regzoo.refine, regzoo.sweep and regzoo.train share their names with their modules: once
    # a lazily exported function's module was imported, the name used to become the module
    assert {"regzoo.refine", "regzoo.sweep", "regzoo.train"} <= set(_import_every_submodule())
    for name in regzoo.__all__:
        obj = getattr(regzoo, name)
        if name == "regularizers":
            assert inspect.ismodule(obj)
            continue
        assert not inspect.ismodule(obj), f"regzoo.{name} is a module, not the documented API"
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert obj.__name__ == name and obj.__module__.startswith("regzoo."), name
    assert regzoo.refine is importlib.import_module("regzoo.refine").refine
    assert regzoo.sweep is importlib.import_module("regzoo.sweep").sweep
    assert regzoo.train is importlib.import_module("regzoo.train").train
    assert callable(regzoo.refine) and callable(regzoo.sweep) and callable(regzoo.train)


def test_import_regzoo_costs_torch_not_lightning_or_matplotlib():
    import subprocess
    import sys

    code = (
        "import sys, regzoo; regzoo.load_model; regzoo.refine; regzoo.sweep; regzoo.register; "
        "print(sorted(m for m in ('lightning', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    assert "train" in dir(regzoo) and "HyperRegistration" in regzoo.__all__


def test_old_module_paths_work_with_a_deprecation_warning():
    import subprocess
    import sys

    old = {
        "regzoo.model": ["load_model", "HyperRegistration", "check_finite_field"],
        "regzoo.refine": ["RefineOptions", "refine_field", "result_objective", "refine_flags"],
        "regzoo.sweep": ["parse_grid", "SweepResult"],
        "regzoo.train": ["prepare_run_dir"],
        "regzoo.lung_similarity": ["MINDSSC", "NGF", "MI", "DescriptorSimilarity"],
    }
    lines = [
        "import warnings",
        "import regzoo",
        "def load(module, names):",
        "    with warnings.catch_warnings(record=True) as caught:",
        "        warnings.simplefilter('always')",
        "        exec(f'from {module} import {names}')",
        "    print([str(w.message) for w in caught if w.category is DeprecationWarning][0])",
        *(f"load({module!r}, {', '.join(names)!r})" for module, names in old.items()),
        "print(callable(regzoo.refine) and callable(regzoo.sweep) and callable(regzoo.train))",
    ]
    run = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    printed = run.stdout.strip().splitlines()
    for module, message in zip(old, printed, strict=False):
        assert message.startswith(f"{module} is deprecated: import from regzoo."), message
    assert len(printed) == len(old) + 1 and printed[-1] == "True"

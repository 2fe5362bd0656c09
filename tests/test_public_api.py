import inspect

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

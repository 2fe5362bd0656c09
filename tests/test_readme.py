"""The README's API example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs():
    block = re.search(r"## API in ten lines\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "README lost its API example"
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)  # the README's own code
    assert namespace["energy"].shape == (2,)
    assert "my_energy" in namespace["regzoo"].regularizers.available()

"""The documented configuration matches the code: every key exists, every option is documented."""

import re
from pathlib import Path

from collector.allowlist import load_allowlist
from collector.config import PolicyConfig, load_config, validate_sources
from collector.registry import available, get_integration

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"


def uncommented(text: str) -> str:
    """The example with its commented-out optional keys switched on."""
    return re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M)


def test_example_config_loads_with_every_optional_key(tmp_path):
    config_file = tmp_path / "accessproof.toml"
    config_file.write_text(uncommented(EXAMPLE.read_text()))
    config = load_config(config_file)
    validate_sources(config)     # every key is one the integrations accept
    assert config.hr.columns["email"] == "Work Email"
    assert config.sources[0].get("cloudtrail_endpoint_url") == "http://127.0.0.1:5001"


def test_every_option_and_policy_key_is_documented():
    text = EXAMPLE.read_text()
    for name in available():
        for option in get_integration(name).options:
            assert re.search(rf"^#? ?{option} = |^\[sources\.{option}\]", text, re.M), \
                f"{name}: {option} undocumented"
    for key in PolicyConfig.__dataclass_fields__:
        assert re.search(rf"^{key} = ", text, re.M), key


def test_allowlist_example_loads():
    entries = load_allowlist(ROOT / "service-accounts.example.toml")
    assert entries[0].account == "ci-deployer" and entries[0].owner


def test_readme_quick_start_is_make_demo_and_make_test():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make demo" in quick and "make test" in quick


def test_every_pack_option_is_documented():
    from reports.options import KNOWN_KEYS
    text = EXAMPLE.read_text()
    for key in KNOWN_KEYS:
        assert re.search(rf"^#? ?{key} = ", text, re.M), f"[pack] {key} undocumented"

"""The policy engine: first matching rule decides, deny by default, hot reload, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgehub.edge.errors import ConfigError
from edgehub.edge.safety import Policy, PolicyEngine
from edgehub.edge.safety.egress import granted
from edgehub.edge.safety.policy import default_policy_text

RULES = """
version = 1

[[rules]]
id = "no-keys"
tools = ["read_file", "write_file"]
effect = "deny"
reason = "key files"
args = { path = ["*.pem", "re:(^|/)secrets/"] }

[[rules]]
id = "files"
tools = ["*_file"]
effect = "allow"

[[rules]]
id = "curl-needs-ok"
tools = ["run_command"]
effect = "needs_approval"
args = { command = ["re:\\\\bcurl\\\\b"] }
"""


@pytest.fixture
def policy() -> Policy:
    return Policy.parse(RULES, source="test")


@pytest.mark.parametrize(
    ("tool", "args", "effect", "rule"),
    [
        ("read_file", {"path": "notes.txt"}, "allow", "files"),
        ("write_file", {"path": "server.pem", "content": "x"}, "deny", "no-keys"),
        ("read_file", {"path": "a/secrets/token"}, "deny", "no-keys"),
        ("read_file", {"path": "not-secrets/x"}, "allow", "files"),
        ("run_command", {"command": "curl http://x"}, "needs_approval", "curl-needs-ok"),
        ("run_command", {"command": "ls -l"}, "deny", "default"),
        ("run_command", {}, "deny", "default"),
        ("unknown_tool", {"path": "x"}, "deny", "default"),
    ],
)
def test_first_matching_rule_decides_and_anything_else_is_denied(
    policy: Policy, tool: str, args: dict[str, str], effect: str, rule: str
) -> None:
    verdict = policy.decide(tool, args)
    assert (verdict.effect, verdict.rule) == (effect, rule)
    assert verdict.digest == policy.digest


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("version = 1\n[[rules]]\nid = 'a'\ntools = ['x']\neffect = 'maybe'\n", "rules.0.effect"),
        ("version = 4\n", "version"),
        ("version = '2'\n", "version"),
        ("version = 1\n[[rules]]\nid = 'a'\ntools = []\neffect = 'allow'\n", "rules.0.tools"),
        (
            "version = 1\n[[rules]]\nid = 'a'\ntools = ['x']\neffect = 'allow'\nargs = {p = ['re:(']}\n",
            "rules.0.args",
        ),
        ("version = 1\n[[rules]]\nid = 'a'\ntools = ['x']\neffect = 'allow'\ncolour = 1\n", "rules.0.colour"),
        ("version = 1\n" + "[[rules]]\nid = 'a'\ntools = ['x']\neffect = 'allow'\n" * 2, "rules"),
        ("version = 1\nrules = [\n", "(policy)"),
    ],
)
def test_a_broken_policy_is_refused_naming_the_bad_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Policy.parse(text, source="p.toml")
    assert "p.toml" in str(info.value)
    if key != "(policy)":
        assert info.value.key == key


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()  # make the change visible even within one mtime tick
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_edits_take_effect_without_restart_and_a_broken_edit_keeps_the_last_good_policy(
    tmp_path: Path,
) -> None:
    path = tmp_path / "policy.toml"
    _write(path, RULES)
    engine = PolicyEngine(path)
    assert engine.decide("run_command", {"command": "ls"}).effect == "deny"
    _write(path, RULES + '\n[[rules]]\nid = "ls"\ntools = ["run_command"]\neffect = "allow"\n')
    assert engine.decide("run_command", {"command": "ls"}).rule == "ls"
    _write(path, "version = 1\n[[rules]]\nid = 'oops'\n")
    assert engine.decide("run_command", {"command": "ls"}).rule == "ls"
    assert "rules.0.tools" in engine.load_error
    path.unlink()
    assert engine.decide("run_command", {"command": "ls"}).rule == "ls"
    assert "not found" in engine.load_error


def test_the_built_in_default_policy_is_valid_and_denies_unknown_tools() -> None:
    policy = Policy.parse(default_policy_text(), source="default")
    assert policy.decide("write_file", {"path": "a.txt"}).effect == "allow"
    assert policy.decide("write_file", {"path": "id_rsa"}).effect == "deny"
    assert policy.decide("run_command", {"command": "rm -rf data"}).effect == "needs_approval"
    assert policy.decide("run_command", {"command": "ls"}).effect == "allow"
    assert policy.decide("http_post", {}).rule == "default"


@pytest.mark.parametrize(
    ("tool", "args", "effect"),
    [
        ("make_dir", {"path": "archive"}, "allow"),
        ("list_dir", {"path": "."}, "allow"),
        ("move_file", {"path": "draft.txt", "to": "final.txt"}, "allow"),
        ("move_file", {"path": "deploy.key", "to": "notes.txt"}, "deny"),
        ("move_file", {"path": "notes.txt", "to": "sub/.env"}, "deny"),
        ("move_file", {"path": "a.txt", "to": "server.PEM"}, "deny"),
    ],
)
def test_the_default_policy_judges_the_folder_tools_by_both_their_paths(
    tool: str, args: dict[str, str], effect: str
) -> None:
    policy = Policy.parse(default_policy_text(), source="default")
    assert policy.decide(tool, args).effect == effect


def test_a_rule_can_grant_named_hosts_to_the_calls_it_allows() -> None:
    text = RULES.replace(
        '[[rules]]\nid = "files"',
        '[[rules]]\nid = "docs"\ntools = ["run_command"]\neffect = "allow"\n'
        'args = { command = ["re:^curl "] }\nnetwork = ["docs.example.com:443", "*.pypi.org"]\n\n'
        '[[rules]]\nid = "files"',
    )
    policy = Policy.parse(text, source="t")
    verdict = policy.decide("run_command", {"command": "curl https://docs.example.com/a"})
    assert (verdict.rule, verdict.network) == ("docs", ("docs.example.com:443", "*.pypi.org"))
    assert policy.decide("read_file", {"path": "a"}).network == ()


@pytest.mark.parametrize("grant", ["http://x.com", "a b", "x.com:1:2", "x.com/path"])
def test_a_network_grant_must_be_a_host_pattern(grant: str) -> None:
    text = f'version = 1\n[[rules]]\nid = "a"\ntools = ["x"]\neffect = "allow"\nnetwork = ["{grant}"]\n'
    with pytest.raises(ConfigError, match="network"):
        Policy.parse(text, source="t")


@pytest.mark.parametrize(
    ("host", "port", "ok"),
    [
        ("docs.example.com", 443, True),
        ("docs.example.com", 80, False),
        ("files.pypi.org", 443, True),
        ("files.pypi.org", 8443, False),
        ("pypi.org.evil.com", 443, False),
        ("DOCS.EXAMPLE.COM", 443, True),
        ("localhost", 9000, True),
    ],
)
def test_grants_match_host_and_port(host: str, port: int, ok: bool) -> None:
    grants = ("docs.example.com:443", "*.pypi.org", "localhost:9*")
    assert granted(grants, host, port) is ok

"""Cedar policies (the seed's three as shipped, the default set, errors by line), cursors, key format."""

from __future__ import annotations

import pytest

from api.cursor import CursorError, Cursors
from api.policy import (
    DEFAULT_POLICIES,
    SEED_POLICIES,
    PolicyError,
    load_policies,
    load_policy_files,
    statements,
)
from stores.apikeys import ApiKey, key_id_of, new_token

BETA_KEY = ApiKey("k1", "partner", {"environment": "beta"}, 0)
PROD_KEY = ApiKey("k2", "prod-team", {"environment": "prod"}, 0)
OPS_KEY = ApiKey("k3", "ops", {"role": "ops"}, 0)
BARE_KEY = ApiKey("k4", "bare", {}, 0)
BETA_PILOT = {"environment": "beta", "stage": "pilot", "fleet": "busan"}
BETA_PROD = {"environment": "beta", "stage": "prod", "fleet": "busan"}
PROD_PROD = {"environment": "prod", "stage": "prod", "fleet": "seoul"}
PROD_TEST = {"environment": "prod", "stage": "test", "fleet": "seoul"}


def test_the_seed_policies_as_shipped() -> None:
    p = load_policy_files(SEED_POLICIES)
    assert p.reads == {"environment", "stage"}
    # DenyAccessForProd: resource stage prod is forbidden, whatever else permits
    for action in ("vehicles:Get", "vehicles:List", "incidents:Get", "incidents:List"):
        assert p.decide(BETA_KEY, action, BETA_PILOT)
        assert not p.decide(BETA_KEY, action, BETA_PROD)
        assert not p.decide(PROD_KEY, action, PROD_PROD)
        # AllowAccessForSameResTag: only the principal's environment
        assert p.decide(PROD_KEY, action, PROD_TEST)
        assert not p.decide(BETA_KEY, action, PROD_TEST)
        assert not p.decide(BARE_KEY, action, BETA_PILOT)  # default deny
        assert not p.decide(OPS_KEY, action, PROD_TEST)
    # AllowAccessForSameReqTag: a silence only with the principal's environment as requested tag
    assert p.decide(BETA_KEY, "silences:Create", {"environment": "beta"})
    assert not p.decide(BETA_KEY, "silences:Create", {"environment": "prod"})
    assert not p.decide(BETA_KEY, "silences:Create", {})
    assert not p.decide(BETA_KEY, "silences:Create", {"environment": "beta", "stage": "prod"})


def test_the_default_policies_add_ops() -> None:
    p = load_policy_files(DEFAULT_POLICIES)
    assert p.decide(OPS_KEY, "vehicles:Get", PROD_PROD) and p.decide(OPS_KEY, "silences:Create", {})
    assert not p.decide(BETA_KEY, "vehicles:Get", BETA_PROD)  # the forbid still holds for others
    assert p.decide(BETA_KEY, "vehicles:List", BETA_PILOT)


def test_decisions_are_per_tag_class() -> None:
    p = load_policy_files(SEED_POLICIES)
    p.decide(BETA_KEY, "vehicles:List", BETA_PILOT)
    n = len(p._cache)
    p.decide(BETA_KEY, "vehicles:List", {**BETA_PILOT, "fleet": "seoul"})  # fleet is not read: same class
    assert len(p._cache) == n


SEED = SEED_POLICIES.read_text()
TAIL = "\npermit (principal, action, resource)\n"
BROKEN = [
    (SEED.replace("when { resource has stage", "whn { resource has stage"), "whn {"),
    (SEED.replace("resource.environment == principal", "resource.environmnt == principal", 1), "environmnt"),
    (SEED.replace('Action::"incidents:List"', 'Action::"incidents:Lst"'), 'Action::"incidents:Lst"'),
    (SEED + '\npermit (principal, action, resource == Vehicle::"7");\n', 'resource == Vehicle::"7"'),
    (SEED + TAIL + 'when { resource.zone == "x" };\n', "resource.zone"),
    (SEED + TAIL + 'when { principal.name == "x" }\n', "permit (principal"),  # no ';': where it starts
]


@pytest.mark.parametrize(("broken", "needle"), BROKEN)
def test_an_error_names_its_line(broken: str, needle: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_policies(broken, None, "p.cedar")
    line = broken.splitlines()[err.value.line - 1]
    assert needle in line, (str(err.value), line)
    assert str(err.value).startswith(f"p.cedar:{err.value.line}: ")


def test_statements_ignore_semicolons_in_strings_and_comments() -> None:
    text = (
        '// a; comment\npermit (principal, action, resource)\nwhen { principal.name == "a;b" };\n\n'
        "forbid (principal, action, resource);"
    )
    parts = statements(text)
    assert [s.line for s in parts] == [2, 5]


def test_empty_policy_file_is_refused() -> None:
    with pytest.raises(PolicyError, match="no policies"):
        load_policies("// nothing\n")


def test_cursors_are_opaque_bound_and_bounded() -> None:
    c = Cursors(b"k" * 32)
    q: dict[str, object] = {"fleet": "busan", "after": None}
    token = c.encode("vehicles", "1042", q)
    assert "1042" not in token and len(token) < 100
    assert c.decode(token, "vehicles", q) == "1042"
    other: dict[str, object] = {"fleet": "seoul"}
    cases = [(token, other), (token[:-1] + "A", q), ("99999999999999999999999", q), ("x" * 300, q), ("", q)]
    for bad, query in cases:
        with pytest.raises(CursorError):
            c.decode(bad, "vehicles", query)
    with pytest.raises(CursorError):
        c.decode(token, "incidents", q)
    with pytest.raises(CursorError):
        Cursors(b"other" * 8).decode(token, "vehicles", q)


def test_key_format() -> None:
    kid, token = new_token()
    assert key_id_of(token) == kid
    assert key_id_of(token + "x") is None and key_id_of("fe_" + "0" * 12 + "_short") is None
    assert key_id_of("x" * 5000) is None

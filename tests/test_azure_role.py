"""The shipped custom role and the docs match what the playbooks declare they call."""

from __future__ import annotations

import json
from pathlib import Path

import playbooks

ROOT = Path(__file__).parent.parent


def test_role_grants_exactly_what_the_playbooks_need() -> None:
    role = json.loads((ROOT / "deploy" / "azure-role.json").read_text())
    needed = {a for p in playbooks.builtin().values() for a in p.permissions}
    assert needed, "no playbook declares Azure permissions"
    assert set(role["Actions"]) == needed
    assert role["DataActions"] == [] and role["NotActions"] == []
    assert all(not a.endswith("*") for a in role["Actions"]), (
        "no wildcards in a least-privilege role"
    )


def test_docs_list_every_action_of_every_playbook() -> None:
    doc = (ROOT / "docs" / "azure.md").read_text()
    for playbook in playbooks.builtin().values():
        for action in playbook.permissions:
            assert f"`{action}`" in doc, f"{playbook.name}: {action} missing from docs/azure.md"

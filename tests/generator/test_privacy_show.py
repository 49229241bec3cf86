"""``fedaug privacy show`` on a folder that is not a site's state folder."""

from __future__ import annotations

import pytest

from fedaug.cli import main

LEDGER = "privacy-ledger.json"


@pytest.mark.parametrize("given", ["fedaug-out", "fedaug-out/sites"])
def test_privacy_show_lists_the_site_folders_below_a_folder_without_a_ledger(
        tmp_path, monkeypatch, capsys, given):
    # Prepare: a simulation's output folder, its sites' ledgers two levels down
    monkeypatch.chdir(tmp_path)
    for site in ("site-0", "site-1"):
        (tmp_path / "fedaug-out" / "sites" / site).mkdir(parents=True)
        (tmp_path / "fedaug-out" / "sites" / site / LEDGER).write_text("{}")
    (tmp_path / "fedaug-out" / "global").mkdir()
    # Execute
    code = main(["privacy", "show", "--state-dir", given])
    err = capsys.readouterr().err
    # Assert: no tampering advice, but the folders to pass
    assert code == 2
    assert f"{given} holds no privacy ledger" in err
    assert "pass one of: fedaug-out/sites/site-0, fedaug-out/sites/site-1." in err.lower()
    assert "Restore" not in err and "cannot be read" not in err


def test_privacy_show_says_when_no_folder_below_holds_a_ledger(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main(["privacy", "show", "--state-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "holds no privacy ledger" in err and "no folder below it does" in err
    assert "state-dir" in err and "Restore" not in err
    assert main(["privacy", "show", "--state-dir", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_a_removed_ledger_beside_its_head_file_is_still_reported_as_tampered(tmp_path, capsys):
    # Prepare: the head file says a ledger existed; the ledger is gone
    (tmp_path / "privacy-ledger.head.json").write_text('{"count": 1, "last-hash": "x"}')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / LEDGER).write_text("{}")
    # Execute
    assert main(["privacy", "show", "--state-dir", str(tmp_path)]) == 2
    # Assert: the ledger module's own advice, not a list of other folders
    err = capsys.readouterr().err
    assert "pass one of" not in err.lower() and "Restore" in err

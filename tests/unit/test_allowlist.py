"""The --allow-peers file: one peer id a line, errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmtrain.dht.allowlist import MAX_ALLOWED_PEERS, AllowListError, load_allowed_peers, parse_allowed_peers

A = "QmQcFJxEx6sfcwhtFWu7MjeuvkPwmd6WzVahMiratqmoky"
B = "QmdfBmaWAsmPnLsmFHUm1ReK2jPFveLNK1pABgVHeSrVAZ"


def test_ids_comments_and_blank_lines() -> None:
    text = f"# the lab's machines\n{A}\n\n  {B}  # the laptop\n{A}\n"
    assert parse_allowed_peers(text) == {A, B}


@pytest.mark.parametrize(("text", "message"), [
    (f"{A}\nnot-a-peer-id\n", "line 2: 'not-a-peer-id' is not a peer id"),
    (f"{A}0OIl\n", "line 1"),  # 0, O, I and l are not base58
    ("# nobody yet\n\n", "lists no peer ids"),
    ("".join(f"Qm{i:044d}\n".replace("0", "z") for i in range(MAX_ALLOWED_PEERS + 1)), f"at most {MAX_ALLOWED_PEERS}"),
])
def test_bad_lists_are_refused_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(AllowListError, match=message):
        parse_allowed_peers(text)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(AllowListError, match="cannot read the allow-list .*members.txt"):
        load_allowed_peers(tmp_path / "members.txt")
    (tmp_path / "members.txt").write_text(A + "\n")
    assert load_allowed_peers(tmp_path / "members.txt") == {A}

"""CLI: classify/encode/traverse on a tiny model in our format; bad input → one line, exit 2, no traceback."""

import json

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from hysac.cli import app
from hysac.model import HySAC

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, released):
    root = tmp_path_factory.mktemp("cli")
    clip, ck = released
    m = HySAC.from_pretrained(ck, backbone=clip)
    return m.save_pretrained(root / "ours")


def test_classify_text_file_json_with_bad_lines(model_dir, tmp_path):
    f = tmp_path / "inputs.txt"
    f.write_bytes("a cat on a mat\n\nblood everywhere\n".encode() + b"\xff\xfe broken\n" + "last one\n".encode())
    res = runner.invoke(app, ["classify", "--model", str(model_dir), "--text-file", str(f), "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["input"] for r in rows][0] == "a cat on a mat" and rows[2]["input"] == "blood everywhere"
    assert len(rows) == 5
    assert "empty" in rows[1]["error"] and "UTF-8" in rows[3]["error"]
    for r in (rows[0], rows[2], rows[4]):
        assert isinstance(r["score"], float) and isinstance(r["unsafe"], bool) and "error" not in r
        assert r["unsafe"] == (r["score"] > r["threshold"])


def test_classify_marks_texts_longer_than_the_model_reads(model_dir):
    long = " ".join(["a cat on a mat"] * 20)  # far beyond the tiny text tower's 24 positions
    res = runner.invoke(app, ["classify", "--model", str(model_dir), "--text", "a cat", "--text", long, "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["truncated"] for r in rows] == [False, True]
    table = runner.invoke(app, ["classify", "--model", str(model_dir), "--text", "a cat", "--text", long])
    assert table.exit_code == 0, table.output
    assert "1 text is longer than the model reads (24 tokens)" in table.stdout


def test_search_marks_a_query_longer_than_the_model_reads(model_dir, tmp_path):
    src = tmp_path / "items.csv"
    src.write_text("text\na cat on a mat\na dog in the park\n")
    res = runner.invoke(app, ["index", "build", str(src), "--out", str(tmp_path / "idx"), "--model", str(model_dir),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    long = " ".join(["a cat on a mat"] * 20)
    res = runner.invoke(app, ["search", "--index", str(tmp_path / "idx"), "--text", "a cat", "--text", long,
                              "--json", "-k", "1"])
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["query_truncated"] for x in res.stdout.splitlines()] == [False, True]
    res = runner.invoke(app, ["search", "--index", str(tmp_path / "idx"), "--text", long, "-k", "1"])
    assert res.exit_code == 0 and "longer than the model reads" in res.stdout
    res = runner.invoke(app, ["traverse", "--model", str(model_dir), "--text", "a cat", "--text", long, "--json"])
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["truncated"] for x in res.stdout.splitlines()] == [False, True]


def test_classify_images_and_table(model_dir, tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (30, 30), "red").save(tmp_path / "imgs" / "a.png")
    (tmp_path / "imgs" / "b.jpg").write_bytes(b"not an image")
    res = runner.invoke(app, ["classify", "--model", str(model_dir), "--image", str(tmp_path / "imgs"), "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert rows[0]["modality"] == "image" and rows[0]["score"] is not None
    assert "b.jpg" in rows[1]["error"]
    table = runner.invoke(app, ["classify", "--model", str(model_dir), "--text", "hello there"])
    assert table.exit_code == 0 and "hello there" in table.stdout


def test_encode_and_traverse(model_dir, tmp_path):
    out = tmp_path / "emb.safetensors"
    res = runner.invoke(app, ["encode", "--model", str(model_dir), "--text", "one", "--text", "two", "--out", str(out)])
    assert res.exit_code == 0, res.output
    t = load_file(str(out))
    assert t["text_embeddings"].shape[0] == 2 and t["text_scores"].shape == (2,)
    res = runner.invoke(app, ["traverse", "--model", str(model_dir), "--text", "x", "--tau", "0.01", "--json"])
    row = json.loads(res.stdout.splitlines()[0])
    assert res.exit_code == 0 and row["score_after"] == pytest.approx(0.01, abs=1e-4)


@pytest.mark.parametrize("args, message", [
    (["classify"], "nothing to classify"),
    (["classify", "--model", "/no/such/model", "--text", "x"], "neither"),
    (["classify", "--text-file", "/no/such/file.txt"], "not found"),
    (["traverse", "--text", "x", "--target", "sideways"], "unknown target"),
    (["train", "--config", "/no/such.yaml"], "not found"),
])
def test_bad_input_one_line_exit_2(args, message):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert message in res.stderr and "Traceback" not in res.output


def test_models_lists_registry():
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and "hysac-mini" in res.stdout and "aimagelab/HySAC" in res.stdout


def test_fast_flag_on_classify_index_build_and_service(model_dir, tmp_path):
    """``--fast`` (hysac.fast.optimize: the CPU path here) gives the plain path's scores from every entry point."""
    from fastapi.testclient import TestClient
    from PIL import Image

    from hysac.service.app import create_app

    texts = ["a cat on a mat", "blood everywhere", "a weapon in the park"]
    plain = runner.invoke(app, ["classify", "--model", str(model_dir), "--json", *sum((["-t", t] for t in texts), [])])
    quick = runner.invoke(app, ["classify", "--model", str(model_dir), "--json", "--fast",
                                *sum((["-t", t] for t in texts), [])])
    assert plain.exit_code == quick.exit_code == 0, quick.output
    a = [json.loads(x)["score"] for x in plain.stdout.splitlines()]
    b = [json.loads(x)["score"] for x in quick.stdout.splitlines()]
    assert a == pytest.approx(b, rel=1e-5)

    (tmp_path / "imgs").mkdir()
    for i, colour in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (40 + i, 30), colour).save(tmp_path / "imgs" / f"{i}.png")
    res = runner.invoke(app, ["index", "build", str(tmp_path / "imgs"), "--out", str(tmp_path / "idx"),
                              "--model", str(model_dir), "--fast", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[-1])["added"] == 3

    with TestClient(create_app(str(model_dir), tmp_path / "idx", fast=True),
                    base_url="http://127.0.0.1") as client:
        health = client.get("/health").json()
        assert health["model"]["fast_path"]["path"] == "cpu"
        r = client.post("/classify", json={"texts": texts}).json()
        assert [x["score"] for x in r["results"]] == pytest.approx(a, rel=1e-5)


def _options():
    """(command path, click option) for every option of every hysac command, as the entry point builds them."""
    from hysac.cli import build_command

    out = []

    def walk(cmd, path):
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            walk(sub, path + [name])
        for p in getattr(cmd, "params", []):
            if getattr(p, "param_type_name", "") == "option":
                out.append((" ".join(path), p))

    walk(build_command(), ["hysac"])
    return out


def test_version_flag():
    from click.testing import CliRunner as ClickRunner

    from hysac import __version__
    from hysac.cli import build_command

    res = ClickRunner().invoke(build_command(), ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"hysac {__version__}"


def test_every_option_has_help_and_one_meaning_per_short_flag():
    opts = _options()
    assert len({cmd for cmd, _ in opts}) >= 12  # the whole tree was walked (index and eval subcommands too)
    missing = [(cmd, p.opts) for cmd, p in opts if not p.help]
    assert missing == []
    meaning: dict[str, set[str]] = {}
    for _, p in opts:
        longs = [o for o in p.opts if o.startswith("--")]
        for short in (o for o in p.opts if len(o) == 2 and o.startswith("-")):
            meaning.setdefault(short, set()).update(longs)
    assert {s: m for s, m in meaning.items() if len(m) > 1} == {}
    assert meaning["-i"] == {"--image"}


def test_flags_show_no_value_hint():
    from click.testing import CliRunner as ClickRunner

    from hysac.cli import build_command

    for args in (["train", "--help"], ["classify", "--help"], ["index", "build", "--help"]):
        res = ClickRunner().invoke(build_command(), args, env={"COLUMNS": "160"})
        assert res.exit_code == 0, res.output
        assert "<bool>" not in res.output and "--help" in res.output


@pytest.mark.parametrize("args, message", [
    (["classify", "--text", "   "], "--text #1 is empty"),
    (["classify", "--text", "a cat", "--threshold", "nan"], "--threshold must be a finite number"),
    (["classify", "--text", "a cat", "--threshold", "-1"], "--threshold must be a finite number"),
    (["traverse", "--text", ""], "--text #1 is empty"),
    (["traverse", "--text", "a cat", "--tau", "-0.5"], "--tau must be a finite number"),
    (["traverse", "--text", "a cat", "--tau", "inf"], "--tau must be a finite number"),
    (["traverse", "--text", "a cat", "--mode", "sideways"], "unknown --mode"),
    (["encode", "--text", "", "--out", "x.safetensors"], "--text #1 is empty"),
    (["classify", "--text", "a \udcff cat"], "not valid UTF-8"),
])
def test_values_the_service_refuses_are_refused_by_the_cli(model_dir, args, message):
    res = runner.invoke(app, [*args, "--model", str(model_dir)])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1


def test_classify_exits_2_when_every_input_is_bad(model_dir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    res = runner.invoke(app, ["classify", "--model", str(model_dir), "--image", str(bad), "--json"])
    assert res.exit_code == 2
    assert "none of the 1 inputs could be classified" in res.output

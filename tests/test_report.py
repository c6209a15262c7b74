"""The HTML evaluation report: content, escaping, atomic rebuilds, and real loading in headless Chromium.

Chromium (Debian's, at /usr/bin/chromium; ``bash setup.sh`` installs it) opens the report from
``file://`` and dumps the DOM after the page's media-state script has marked every ``<video>``,
``<audio>`` and ``<img>``: so "loaded" means Chromium itself demuxed the copied H.264/AAC mp4
and read its metadata, not just that a file exists.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import pipeline.report as report  # noqa: E402
from pipeline.media import ffmpeg_exe, write_mp4, write_wav  # noqa: E402
from pipeline.report import ReportError, build_report, fmt  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SECONDS, FPS, RATE = 1.0, 12, 22050

SUMMARY = {"fad": None, "fad_reason": "no VGGish weights in the offline cache",
           "kld_ref_gen": 0.8125, "kld_gen_ref": 1.25, "kld_both": 2.0625, "chroma_cosine": 0.4375,
           "fd_passt": None, "fd_passt_reason": "no PaSST checkpoint given",
           "av_align": 0.25, "av_align_reference": 0.5, "beat_hit": 0.75, "beat_coverage": 0.625,
           "beat_f1": 0.6818, "beat_f1_50ms": 0.125,
           "pairs": 2, "frames": 48, "segments": 4, "model": "tiny"}
LEARNING = {"ce_true": 6.87, "ce_shuffled": 7.32, "video_info_gain": 0.45, "oracle_gain": 1.5e-05,
             "held_out_clips": 12, "event_gain": 0.625, "sync_gain": 0.0625}
CLIP_ROWS = [{"video_id": "clipA", "kld_ref_gen": 0.5, "chroma_cosine": 0.25},
             {"video_id": "clipB", "kld_ref_gen": 1.125, "chroma_cosine": None},
             {"video_id": "clipC", "kld_ref_gen": 2.0, "chroma_cosine": 0.75}]
NOTICE = "The codec decoder has random weights: generated audio is not music."


# ---- helpers ----

class Dom(HTMLParser):
    """Elements (tag, attrs, text inside them) of an HTML document, as a flat list in document order."""

    VOID = {"img", "meta", "br", "hr", "input", "link", "source"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[dict] = []
        self._open: list[dict] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": "", "children": []}
        if self._open:
            self._open[-1]["children"].append(element)
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag):
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i]["tag"] == tag:
                del self._open[i:]
                break

    def handle_data(self, data):
        for element in self._open:
            element["text"] += data

    def find(self, tag: str, **attrs) -> list[dict]:
        return [e for e in self.elements if e["tag"] == tag
                and all(e["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def one(self, tag: str, **attrs) -> dict:
        found = self.find(tag, **attrs)
        assert len(found) == 1, f"{len(found)} <{tag} {attrs}> elements"
        return found[0]


def children(element: dict, tag: str) -> list[dict]:
    out = []
    for child in element["children"]:
        if child["tag"] == tag:
            out.append(child)
        out.extend(children(child, tag))
    return out


def dump_dom(index: Path, *flags: str) -> Dom:
    """The DOM of ``index`` after Chromium loaded it and ran its scripts (15 s of virtual time at most)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `bash setup.sh` (it installs Debian's chromium), "
                    "which these report tests load the report in")
    with tempfile.TemporaryDirectory(prefix="v2m-chromium-") as profile:
        result = subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, "--dump-dom",
                                 "--virtual-time-budget=15000", index.resolve().as_uri()],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "<body" in result.stdout, (
        f"chromium failed (exit {result.returncode}): {result.stderr[-2000:]}")
    return Dom(result.stdout)


PLAYBACK_PAGE = """<!DOCTYPE html><html><body>%s<script>
document.querySelectorAll('video').forEach(function (v) {
  function look() {
    if (v.webkitVideoDecodedByteCount > 0 && v.webkitAudioDecodedByteCount > 0 && !v.hasAttribute('data-decoded')) {
      v.setAttribute('data-decoded',
                     'video:' + v.webkitVideoDecodedByteCount + ' audio:' + v.webkitAudioDecodedByteCount);
      v.pause();
    }
  }
  v.addEventListener('timeupdate', look);
  v.addEventListener('error', function () { v.setAttribute('data-decoded', 'error'); });
});
</script></body></html>"""


def decoded_bytes(tmp_path: Path, videos: list[Path]) -> list[tuple[int, int]]:
    """(video, audio) bytes Chromium's decoders took in while playing each file a moment, muted."""
    tags = "".join(f'<video muted autoplay preload="auto" src="{v.resolve().as_uri()}"></video>' for v in videos)
    page = tmp_path / "playback.html"
    page.write_text(PLAYBACK_PAGE % tags)
    dom = dump_dom(page, "--autoplay-policy=no-user-gesture-required")
    found = [v["attrs"].get("data-decoded", "not decoded") for v in dom.find("video")]
    assert all(f.startswith("video:") for f in found), found
    return [tuple(int(part.split(":")[1]) for part in f.split()) for f in found]


def frames(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:96]
    colour = rng.integers(0, 255, 3)
    return [np.clip(colour + 60 * np.sin((x + 4 * i) / 7.0)[..., None] + y[..., None], 0, 255).astype(np.uint8)
            for i in range(int(SECONDS * FPS))]


def tone(freq: float) -> np.ndarray:
    t = np.arange(int(SECONDS * RATE)) / RATE
    return np.stack([0.3 * np.sin(2 * np.pi * freq * t)] * 2).astype(np.float32)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """Real inputs: per clip a generated and a ground-truth H.264/AAC mp4, one wav, one PNG plot."""
    folder = tmp_path_factory.mktemp("report-inputs")
    media = []
    for n, video_id in enumerate(["clipA", "clipB"]):
        item = {"video_id": video_id,
                "generated": write_mp4(folder / f"{video_id}_gen.mp4", frames(2 * n), FPS, tone(330 + 110 * n), RATE),
                "reference": write_mp4(folder / f"{video_id}_ref.mp4", frames(2 * n + 1), FPS, tone(440), RATE)}
        if n == 0:
            item["generated_audio"] = write_wav(folder / f"{video_id}_gen.wav", tone(330), RATE)
        media.append(item)
    figure, axes = plt.subplots(figsize=(4, 2.5))
    axes.plot([0, 1, 2, 3], [7.6, 7.2, 7.0, 6.9], label="ce_true")
    axes.legend()
    plot = folder / "learning_curve.png"
    figure.savefig(plot, dpi=60)
    plt.close(figure)
    return {"media": media, "plots": [plot], "folder": folder}


def build(out: Path, inputs: dict, **changes) -> Path:
    arguments = dict(eval_summary=SUMMARY, clip_rows=CLIP_ROWS, learning=LEARNING, plots=inputs["plots"],
                     media=inputs["media"], notice=NOTICE)
    arguments.update(changes)
    return build_report(out, **arguments)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


# ---- tests ----

def test_report_loads_its_copied_media_in_chromium(tmp_path, inputs):
    built = build(tmp_path / "built", inputs)
    assert built == tmp_path / "built" / "index.html"
    text = built.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text
    # Self-contained: move the folder away from where it was built; the sources stay untouched.
    moved = tmp_path / "elsewhere" / "report"
    moved.parent.mkdir()
    shutil.move(tmp_path / "built", moved)
    dom = dump_dom(moved / "index.html")

    body = dom.one("body")
    assert body["attrs"].get("data-media-ready") == "yes", "media-state script did not settle"
    assert body["attrs"].get("data-media-errors") == "0"
    assert "All 6 media files loaded" in dom.one("p", id="media-status")["text"]
    assert NOTICE in dom.one("div", id="notice")["text"]

    metrics = {row["attrs"]["data-metric"]: row for row in children(dom.one("table", id="metrics"), "tr")
               if "data-metric" in row["attrs"]}
    sync_keys = ["av_align", "av_align_reference", "beat_hit", "beat_coverage", "beat_f1", "beat_f1_50ms"]
    assert list(metrics) == ["fad", "kld_ref_gen", "kld_gen_ref", "kld_both", "chroma_cosine", "fd_passt", *sync_keys]
    for key in ["kld_ref_gen", "kld_gen_ref", "kld_both", "chroma_cosine", *sync_keys]:
        value_cell = children(metrics[key], "td")[0]
        assert json.loads(value_cell["attrs"]["data-value"]) == SUMMARY[key]
        assert value_cell["text"] == fmt(SUMMARY[key])
    assert [c["text"] for c in children(metrics["kld_ref_gen"], "td")][0] == "0.8125"
    assert "KL(reference ‖ generated)" in metrics["kld_ref_gen"]["text"]
    assert "KL(generated ‖ reference)" in metrics["kld_gen_ref"]["text"]
    assert "higher is better" in metrics["chroma_cosine"]["text"]
    fad = children(metrics["fad"], "td")[0]
    assert fad["attrs"]["data-value"] == "null"
    assert "not computed" in fad["text"] and SUMMARY["fad_reason"] in fad["text"]
    fd_passt = children(metrics["fd_passt"], "td")[0]
    assert fd_passt["attrs"]["data-value"] == "null" and SUMMARY["fd_passt_reason"] in fd_passt["text"]
    assert "motion peaks" in metrics["av_align"]["text"] and "ceiling" in metrics["av_align_reference"]["text"]
    assert "LORIS" in metrics["beat_hit"]["text"] and "50 ms" in metrics["beat_f1_50ms"]["text"]
    counts = {r["attrs"]["data-key"]: children(r, "td")[0]["text"]
              for r in children(dom.one("table", id="counts"), "tr") if "data-key" in r["attrs"]}
    assert counts == {"pairs": "2", "frames": "48", "segments": "4"}
    assert "tiny" in dom.one("table", id="summary-other")["text"]

    learning = {r["attrs"]["data-key"]: children(r, "td")[0]["text"]
                for r in children(dom.one("table", id="learning"), "tr") if "data-key" in r["attrs"]}
    assert learning == {"ce_true": "6.8700", "ce_shuffled": "7.3200", "video_info_gain": "0.4500",
                        "oracle_gain": "1.500e-05", "held_out_clips": "12", "event_gain": "0.6250",
                        "sync_gain": "0.0625"}
    meanings = {r["attrs"]["data-key"]: children(r, "td")[1]["text"]
                for r in children(dom.one("table", id="learning"), "tr") if "data-key" in r["attrs"]}
    assert "half the segment" in meanings["sync_gain"] and "motion events" in meanings["event_gain"]

    videos = dom.find("video")
    assert len(videos) == 4
    for video in videos:
        assert video["attrs"].get("data-state") == "loaded", f"{video['attrs']['src']}: {video['attrs']}"
        assert video["attrs"]["preload"] == "metadata" and "controls" in video["attrs"]
        assert not video["attrs"]["src"].startswith(("/", "file:"))
        assert abs(float(video["attrs"]["data-duration"]) - SECONDS) < 0.1
        assert video["attrs"]["data-size"] == "96x64"
    [audio] = dom.find("audio")
    assert audio["attrs"].get("data-state") == "loaded"
    assert abs(float(audio["attrs"]["data-duration"]) - SECONDS) < 0.05
    [image] = dom.find("img")
    assert image["attrs"].get("data-state") == "loaded"
    assert any("learning curve" in f["text"] for f in dom.find("figure"))
    assert not dom.find("span", **{"class": "media-error"})
    # Metadata alone would not show that the AAC track is decodable (Chromium drops a track it cannot
    # decode and plays the rest): play each copy a moment and read the decoders' byte counters.
    for video_bytes, audio_bytes in decoded_bytes(tmp_path, [moved / v["attrs"]["src"] for v in videos]):
        assert video_bytes > 0 and audio_bytes > 0

    for video_id in ["clipA", "clipB"]:
        clip = dom.one("div", data_video_id=video_id)
        roles = [v["attrs"]["data-role"] for v in children(clip, "video")]
        assert roles == ["generated", "reference"]
        row = next(r for r in CLIP_ROWS if r["video_id"] == video_id)
        table = children(clip, "table")[0]
        shown = {r["attrs"]["data-key"]: children(r, "td")[0]["text"] for r in children(table, "tr")
                 if "data-key" in r["attrs"]}
        assert shown == {k: fmt(v) for k, v in row.items() if k != "video_id"}
    clip_table = dom.one("table", id="clips")
    assert [r["attrs"]["data-video-id"] for r in children(clip_table, "tr") if "data-video-id" in r["attrs"]] == [
        "clipA", "clipB", "clipC"]
    assert "—" in children(clip_table, "tr")[2]["text"]  # clipB's chroma_cosine is None


def test_undecodable_media_is_marked_in_the_page(tmp_path, inputs):
    """Files that exist but do not play: built fine, shown with data-state="error" and a visible label.

    One is not media at all; the other is an mp4 whose MPEG-4 Part 2 video Chromium cannot decode
    (it still fires loadedmetadata, for the AAC track, with a 0x0 picture).
    """
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not an mp4 file" * 40)
    part2 = tmp_path / "part2.mp4"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(inputs["media"][0]["generated"]),
                    "-c:v", "mpeg4", "-c:a", "copy", str(part2)], check=True)
    media = [{"video_id": "broken", "generated": broken, "reference": inputs["media"][0]["reference"]},
             {"video_id": "part2", "generated": part2, "reference": None}]
    index = build(tmp_path / "report", inputs, media=media, plots=[], learning=None)
    dom = dump_dom(index)
    body = dom.one("body")
    assert body["attrs"].get("data-media-ready") == "yes" and body["attrs"].get("data-media-errors") == "2"
    assert [v["attrs"]["data-state"] for v in dom.find("video")] == ["error", "loaded", "error"]
    labels = [s["text"] for s in dom.find("span", **{"class": "media-error"})]
    assert len(labels) == 2
    assert "could not load media/broken/generated.mp4" in labels[0]
    assert labels[1] == "could not load media/part2/generated.mp4: no video track this browser can decode"
    assert "2 of 3 media files could not load" in dom.one("p", id="media-status")["text"]
    assert "No learning figures" in dom.one("p", id="learning-missing")["text"]


def test_missing_media_file_fails_before_writing(tmp_path, inputs):
    media = [dict(inputs["media"][0], reference=tmp_path / "gone.mp4")]
    with pytest.raises(ReportError, match=r"ground-truth video of clip 'clipA': .*gone\.mp4 does not exist"):
        build(tmp_path / "report", inputs, media=media)
    assert not (tmp_path / "report").exists() and leftovers(tmp_path / "report") == []
    with pytest.raises(ReportError, match=r"plot .*nope\.png does not exist"):
        build(tmp_path / "report", inputs, plots=[tmp_path / "nope.png"])
    with pytest.raises(ReportError, match="listed twice"):
        build(tmp_path / "report", inputs, media=inputs["media"][:1] * 2)


def test_failed_rebuild_leaves_the_previous_report(tmp_path, inputs, monkeypatch):
    out = tmp_path / "report"
    index = build(out, inputs)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len(before) == 1 + 1 + 5  # index, plot, 4 videos + 1 wav

    copies = []

    def failing_copy(source, target):
        copies.append(target)
        if len(copies) == 3:
            raise OSError("disk full (simulated)")
        shutil.copyfile(source, target)

    monkeypatch.setattr(report, "_copy", failing_copy)
    with pytest.raises(OSError, match="simulated"):
        build(out, inputs, title="second run")
    assert len(copies) == 3 and copies[0].parent.parent != out  # it was writing into a temp sibling
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and "second run" not in index.read_text()
    assert leftovers(out) == []

    monkeypatch.setattr(report, "_copy", lambda s, t: shutil.copyfile(s, t))
    build(out, inputs, title="second run", media=inputs["media"][:1])
    assert "second run" in index.read_text() and not (out / "media" / "clipB").exists()
    assert leftovers(out) == []


def test_strings_are_escaped_and_odd_ids_get_safe_file_names(tmp_path, inputs):
    video_id = 'x"><script>alert(1)</script>&amp; é/../up'
    media = [{"video_id": video_id, "generated": inputs["media"][0]["generated"], "reference": None}]
    rows = [{"video_id": video_id, "note<b>": "<i>bold</i>"}]
    summary = dict(SUMMARY, kld_ref_gen=None, kld_gen_ref=None, kld_both=None, kld_reason="<no labels> & more")
    index = build(tmp_path / "report", inputs, media=media, clip_rows=rows, eval_summary=summary,
                  title="A & B <report>", notice="<b>not</b> music", learning={"a<b": "<c>"})
    text = index.read_text()
    dom = Dom(text)
    assert len(dom.find("script")) == 1 and not dom.find("i") and not dom.find("b")
    assert dom.one("title")["text"] == "A & B <report>" and dom.one("h1")["text"] == "A & B <report>"
    assert dom.one("div", id="notice")["text"] == "Note: <b>not</b> music"
    assert dom.one("div", data_video_id=video_id)
    assert "<i>bold</i>" in dom.one("table", id="clips")["text"]
    metric_rows = [r for r in children(dom.one("table", id="metrics"), "tr") if "data-metric" in r["attrs"]]
    for row in metric_rows[1:4]:
        assert "not computed (<no labels> & more)" in row["text"]
    # the copy lives under a sanitised name inside the report; no reference -> a placeholder, no video
    [video] = dom.find("video")
    assert (index.parent / video["attrs"]["src"]).resolve().parent.parent == (index.parent / "media").resolve()
    assert (index.parent / video["attrs"]["src"]).is_file()
    assert dom.one("div", data_role="reference")["text"] == "no ground-truth video"


def test_formatting():
    assert [fmt(v) for v in [None, True, 3, 0.45, 6.87, 123.456, 1.5e-5, 2e7, 0.0, float("nan")]] == [
        "—", "yes", "3", "0.4500", "6.8700", "123.46", "1.500e-05", "2.000e+07", "0.0000", "NaN"]


def test_missing_chromium_fails_with_the_setup_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    with pytest.raises(pytest.fail.Exception, match="bash setup.sh"):
        dump_dom(tmp_path / "index.html")

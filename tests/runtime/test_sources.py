"""Inputs of `mrcnet-run` through one FrameSource API: globs, cameras (a camera that does not open),
GStreamer pipelines (this OpenCV may lack GStreamer: the error says what is missing), and a network
stream served by ffmpeg on 127.0.0.1 from the demo clip, read by FrameSource and by `mrcnet-run`
with the fake export: the same frames and the same poses as the file."""
import json
import shutil
import socket
import subprocess
import time

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from mrcnet.runtime import cli
from mrcnet.runtime import manifest as M
from mrcnet.runtime.video_io import FrameSource, SourceError, describe_source, opencv_has_gstreamer, read_jsonl

import runtime_fakes as F

CLIP = M.DEMO_DIR / M.DEMO_CLIP
STREAM_FRAMES = 12  # frames compared through the stream (the clip has 90)


def test_describe_source():
    assert describe_source(0) == ("camera", 0)
    assert describe_source("2") == ("camera", 2)
    for url in ("rtsp://10.0.0.2:8554/cam", "http://127.0.0.1:8080/v.ts", "https://x/y.m3u8", "udp://127.0.0.1:5000"):
        assert describe_source(url) == ("stream", url)
    assert describe_source("nvarguscamerasrc ! nvvidconv ! appsink")[0] == "gstreamer"
    assert describe_source("frames/*.png") == ("glob", "frames/*.png")
    assert describe_source("clip.mp4")[0] == "path"


def test_glob_of_images(tmp_path):
    for i in (3, 1, 2):
        cv2.imwrite(str(tmp_path / f"{i:06d}.png"), np.full((8, 8, 3), i, np.uint8))
    cv2.imwrite(str(tmp_path / "other.jpg"), np.zeros((8, 8, 3), np.uint8))
    src = FrameSource(str(tmp_path / "0*.png"))
    assert not src.live and len(src) == 3
    assert [(f.index, int(f.image[0, 0, 0])) for f in src] == [(1, 1), (2, 2), (3, 3)]
    with pytest.raises(SourceError, match="matches no images"):
        FrameSource(str(tmp_path / "*.bmp"))


def test_camera_that_does_not_open_is_one_line_error():
    with pytest.raises(SourceError) as e:
        FrameSource(97)
    msg = str(e.value)
    assert "\n" not in msg and "camera 97" in msg and "/dev/video97" in msg


def test_cli_camera_that_does_not_open(tmp_path):
    r = CliRunner().invoke(cli.main, ["97", "--fx", "500", "--fy", "500", "--cx", "320", "--cy", "240",
                                      "--detections", str(tmp_path / "d.json"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "cannot open camera 97" in r.output, r.output


def test_gstreamer_pipeline():
    spec = "videotestsrc num-buffers=3 ! video/x-raw,width=64,height=48 ! videoconvert ! appsink"
    if opencv_has_gstreamer():  # pragma: no cover - not this build
        frames = list(FrameSource(spec))
        assert len(frames) == 3 and frames[0].image.shape == (48, 64, 3)
    else:
        with pytest.raises(SourceError) as e:
            FrameSource(spec)
        msg = str(e.value)
        assert "\n" not in msg and "without GStreamer" in msg and "python3-opencv" in msg, msg


def test_stream_that_does_not_open():
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceError, match=f"http://127.0.0.1:{port}/x.ts: cannot open the stream"):
        FrameSource(f"http://127.0.0.1:{port}/x.ts")


# ------------------------------------------------------------------------ ffmpeg loopback stream
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served_clip():
    """A function that starts ffmpeg serving the demo clip once over HTTP (``paced``: at 30 FPS) (MPEG-TS, the clip's
    own video packets, not re-encoded; dump_extra repeats the codec header in-band) on 127.0.0.1 and returns its URL; ffmpeg is stopped after."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (scripts/setup.sh installs it)")
    procs = []

    def serve(paced=False):  # paced: at the clip's frame rate (ffmpeg -re), like a camera
        url = f"http://127.0.0.1:{_free_port()}/clip.ts"
        procs.append(subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "error", *(["-re"] if paced else []),
                                       "-i", str(CLIP), "-c", "copy", "-bsf:v", "dump_extra",
                                       "-f", "mpegts", "-listen", "1", url],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return url

    yield serve
    for p in procs:
        p.kill()
        p.wait(timeout=10)


def _open_when_listening(url, timeout_s=10.0):
    """FrameSource of the stream, retried until ffmpeg listens (bounded)."""
    t_end = time.monotonic() + timeout_s
    while True:
        try:
            return FrameSource(url)
        except SourceError:
            if time.monotonic() > t_end:
                raise
            time.sleep(0.2)


def test_ffmpeg_stream_frames_equal_the_file(served_clip):
    t0 = time.monotonic()
    src = _open_when_listening(served_clip())
    assert src.live and len(src) == 0
    file_frames = [f.image for f, _ in zip(FrameSource(CLIP), range(STREAM_FRAMES))]
    got = [f for f, _ in zip(src, range(STREAM_FRAMES))]
    assert [f.index for f in got] == list(range(STREAM_FRAMES))
    for a, b in zip(file_frames, got):
        assert np.array_equal(a, b.image)  # same packets, same decoder
    print(f"stream: {STREAM_FRAMES} frames equal to the file's in {time.monotonic() - t0:.2f} s")
    assert time.monotonic() - t0 < 30


def _run_cli(inp, args, out, stream=False):
    """mrcnet-run INPUT ARGS --out OUT; a stream is retried until ffmpeg listens (bounded)."""
    for attempt in range(20):
        r = CliRunner().invoke(cli.main, [inp, *args, "--out", str(out), "--overwrite"])
        if r.exit_code == 0 or not stream or "cannot open the stream" not in r.output:
            break
        time.sleep(0.25)
    assert r.exit_code == 0, r.output
    return read_jsonl(out / "poses.jsonl"), json.loads((out / "summary.json").read_text())


def _pose_list(rec):
    return [(o["obj_id"], o["R"], o["t"]) for o in rec["objects"]]


def test_cli_on_ffmpeg_stream_matches_file_run(served_clip, tmp_path, monkeypatch):
    """The stream read by mrcnet-run: in real time (the default for streams; ffmpeg sends at the
    clip's 30 FPS, faster than the pipeline runs here, so frames are dropped) every processed frame's poses equal the file
    run's poses of that frame, and the drops add up; with --no-realtime the first frames are all
    processed, equal to the file's."""
    export = F.make_export(tmp_path / "export", obj_ids=(1, 2, 3))
    monkeypatch.setattr(cli, "make_renderer", lambda device=None: F.SilhouetteRenderer())
    common = ["--model", str(export), "--camera", str(M.DEMO_DIR / M.DEMO_CAMERA),
              "--detections", str(M.DEMO_DIR / M.DEMO_DETECTIONS), "--backend", "onnxruntime-cpu", "--no-video", "-q"]
    url = served_clip()
    _open_when_listening(url).close()  # waits for ffmpeg; ffmpeg serves one client, so serve again
    t0 = time.monotonic()
    file_recs, _ = _run_cli(str(CLIP), common, tmp_path / "file")
    by_frame = {r["frame"]: r for r in file_recs}
    assert len(by_frame) == 90
    live, live_sum = _run_cli(served_clip(paced=True), common, tmp_path / "stream", stream=True)
    t_live = time.monotonic()
    frames = [r["frame"] for r in live]
    assert live_sum["realtime"] and frames == sorted(set(frames)) and frames[0] == 0
    gaps = [b - a - 1 for a, b in zip([-1] + frames, frames)]
    assert [r["dropped"] for r in live] == gaps and live_sum["frames_dropped"] == sum(gaps) > 0
    assert live_sum["frames"] == len(live) and len(live) + sum(gaps) == frames[-1] + 1
    for r in live:
        assert len(r["objects"]) == 3 and _pose_list(r) == _pose_list(by_frame[r["frame"]]), r["frame"]
    seq, seq_sum = _run_cli(served_clip(), [*common, "--no-realtime", "--max-frames", str(STREAM_FRAMES)],
                            tmp_path / "stream-all", stream=True)
    assert [r["frame"] for r in seq] == list(range(STREAM_FRAMES)) and not seq_sum["realtime"]
    assert seq_sum["frames"] == STREAM_FRAMES and seq_sum["frames_failed"] == 0 and seq_sum["frames_dropped"] == 0
    for r in seq:
        assert _pose_list(r) == _pose_list(by_frame[r["frame"]])
    print(f"stream, real time: {len(live)} frames processed, {sum(gaps)} dropped (ffmpeg sends 30 FPS), {t_live - t0:.1f} s with the file run; --no-realtime: {STREAM_FRAMES} of "
          f"{STREAM_FRAMES} frames equal to the file's")

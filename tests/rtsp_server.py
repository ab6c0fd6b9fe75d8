"""A real RTSP server for the tests: GStreamer's gst-rtsp-server, run with the *system* Python (python3-gi).

    /usr/bin/python3 tests/rtsp_server.py PORT [--fps 10] [--size 64x48] [--path /cam]

It serves ``rtsp://127.0.0.1:PORT/cam``: a moving test pattern (``videotestsrc``), JPEG-encoded and sent as RTP
(``rtpjpegpay``), one shared pipeline for every client, with live timestamps. It prints ``ready`` once it
listens, and runs until it is killed. Debian packages: gir1.2-gst-rtsp-server-1.0, python3-gi,
gstreamer1.0-plugins-base (videotestsrc) and gstreamer1.0-plugins-good (jpegenc, rtpjpegpay); ``.ci/run``
installs them.
"""

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--size", default="64x48")
    ap.add_argument("--path", default="/cam")
    args = ap.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    # I420: RFC 2435 (rtpjpegpay) carries 4:2:0 JPEG only
    factory.set_launch(f"( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width={width},"
                       f"height={height},framerate={args.fps}/1 ! jpegenc quality=85 ! rtpjpegpay name=pay0 pt=26 )")
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()

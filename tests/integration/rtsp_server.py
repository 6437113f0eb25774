"""A real RTSP server for the camera tests: GStreamer's gst-rtsp-server serving a moving test
pattern as H.264 (what IP cameras send), run by the system Python (python3-gi).

Usage: /usr/bin/python3 rtsp_server.py PORT [WIDTH HEIGHT FPS]. Prints ``ready`` once it listens.
Serves ``rtsp://127.0.0.1:PORT/cam``. Debian packages: gir1.2-gst-rtsp-server-1.0,
gstreamer1.0-plugins-{base,good,bad} (installed by scripts/setup.sh).
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
port = sys.argv[1]
width, height, fps = (int(v) for v in sys.argv[2:5]) if len(sys.argv) >= 5 else (320, 240, 15)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
    f"framerate={fps}/1 ! openh264enc gop-size={fps} ! h264parse ! "
    "rtph264pay name=pay0 pt=96 config-interval=1 )"
)
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
if server.attach(None) == 0:
    sys.exit(f"cannot listen on 127.0.0.1:{port}")
print("ready", flush=True)
GLib.MainLoop().run()

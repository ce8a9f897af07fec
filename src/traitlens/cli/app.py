"""``traitlens app``: the interactive explorer in the browser (a local gradio server; ``traitlens[app]``)."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "app", help="explore a checkpoint and a collection in the browser (Explain, Heads, Segment)",
        description="Serve a local web app over a checkpoint and an image folder: Finer-CAM with an α slider "
                    "that updates without a new model run, Prompt-CAM / INTR heads, and segmentation by "
                    "tracking with painted or uploaded masks, saved as a project `traitlens segment` runs in "
                    "bulk. Offline: no CDN, no telemetry, no share link unless --share; binds to 127.0.0.1.")
    p.add_argument("--checkpoint", type=Path, required=True, metavar="RUN",
                   help="traitlens run folder (classifier, prompt-cam or intr)")
    p.add_argument("--images", type=Path, required=True, metavar="DIR",
                   help="the image folder to browse (<species>/<image>)")
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="collection with traits.json (siblings, part names); default: found next to --images")
    p.add_argument("--project", type=Path, default=Path("traitlens-project"), metavar="DIR",
                   help="the Segment tab's project folder (default ./traitlens-project)")
    p.add_argument("--atlas", type=Path, default=None, metavar="DIR",
                   help="a folder written by `traitlens atlas`: its pair cards in the Atlas tab")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 opens it to the network, with a warning)")
    p.add_argument("--share", action="store_true", help="also make a public gradio share link (needs internet)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="where the model runs (default cpu)")
    p.add_argument("--display-size", type=int, default=224, help="longer side of the maps shown, px (default 224)")
    p.set_defaults(func=_app)


def _app(args) -> int:
    from traitlens.app import serve
    from traitlens.engine.distributed import resolve_device

    serve(args.checkpoint, args.images, data=args.data, project=args.project, host=args.host, port=args.port,
          share=args.share, device=str(resolve_device(args.device)), display_size=args.display_size,
          atlas=args.atlas)
    return 0

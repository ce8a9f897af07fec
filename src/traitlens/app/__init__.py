"""``traitlens app``: a local web app over one checkpoint and one collection (needs ``traitlens[app]``).

>>> from traitlens.app import build_app
>>> demo = build_app("runs/vit", images="synth/test")      # a gradio Blocks
>>> demo.launch(**launch_options())                           # or serve(...), what the CLI does

Tabs: **Explain** (thumbnail grid with search, upload, top-5, base CAM and Finer-CAM side by side, an α
slider that recombines kept gradients without a model run, comparison classes, downloads), **Heads**
(Prompt-CAM / INTR per-head attention, trait heads, another class's prompt) and **Segment** (label a
support by painting or uploading its label map, propagate to a folder, fix a result and propagate again,
save a project that ``traitlens segment --project`` runs in bulk) and, given ``atlas=`` (``--atlas DIR``),
**Atlas** (the pair cards of a ``traitlens atlas`` folder: ranked parts with their intervals, the specimens).

Offline by design: gradio's telemetry and version check are switched off before gradio is imported
(:func:`offline_environment`), the theme uses system fonts (no Google Fonts), the page's assets are
gradio's bundled ones, no share link unless ``share=True``, and the server binds to 127.0.0.1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Union

from traitlens.errors import UserError

PathLike = Union[str, Path]


def offline_environment() -> None:
    """Switch off every call gradio and the Hugging Face hub would make to the internet (before import)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_SSR_MODE", "False")


def _gradio():
    offline_environment()
    try:
        import gradio
    except ImportError:
        raise UserError("the app needs gradio: pip install 'traitlens[app]'") from None
    return gradio


def find_traits(images: Path, data: Optional[PathLike] = None):
    """The collection's TraitTable: ``data/traits.json``, else one in the image folder or its parent (a
    split of a synthetic collection), else None."""
    from traitlens.data.traits import load_traits

    if data is not None:
        return load_traits(data)
    for folder in (images, images.parent):
        if (folder / "traits.json").is_file():
            return load_traits(folder)
    return None


def create_session(checkpoint: PathLike, images: PathLike, data: Optional[PathLike] = None,
                   project: Optional[PathLike] = None, device: str = "cpu", work: Optional[PathLike] = None,
                   display_size: int = 224, atlas: Optional[PathLike] = None):
    """The :class:`~traitlens.app.session.AppSession` behind the page (its computations, without gradio);
    ``atlas``: a `traitlens atlas` folder for the Atlas tab."""
    import tempfile

    from traitlens.app.collection import Collection
    from traitlens.app.explorer import Explorer
    from traitlens.app.project import SegmentProject
    from traitlens.app.session import AppSession

    images = Path(images)
    if not images.is_dir():
        raise UserError(f"image folder not found: {images}", option="images")
    traits = find_traits(images, data)
    explorer = Explorer.from_checkpoint(checkpoint, traits=traits, device=device, display_size=display_size)
    if traits is not None and sorted(traits.class_names) != sorted(explorer.class_names):
        traits = None  # a traits table of another collection: no siblings rather than wrong ones
        explorer.traits = None
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="traitlens-app-"))
    collection = Collection(images, work)
    parts = {int(p.id): p.name for p in traits.parts if int(p.id) > 0} if traits is not None else None
    proj = SegmentProject.open_or_new(Path(project) if project else Path("traitlens-project"), images=images,
                                      parts=parts)
    session = AppSession(explorer, collection, proj, work=work, title=Path(str(checkpoint)).name)
    if atlas is not None:
        from traitlens.app.atlas_view import AtlasView

        session.atlas = AtlasView(atlas)
    return session


def build_app(checkpoint: PathLike, images: PathLike, data: Optional[PathLike] = None,
              project: Optional[PathLike] = None, device: str = "cpu", work: Optional[PathLike] = None,
              display_size: int = 224, session=None, atlas: Optional[PathLike] = None):
    """The app as a gradio ``Blocks`` (launch it with :func:`launch_options`, or embed it in a notebook).

    checkpoint: a traitlens run folder (classifier, Prompt-CAM or INTR); images: the folder to browse
    (``<species>/<image>``); data: the collection holding ``traits.json`` (siblings, part names; found
    next to ``images`` when omitted); project: the Segment tab's project folder (default
    ``./traitlens-project``); display_size: the longer side of the maps shown, in pixels; atlas: a folder
    written by ``traitlens atlas``, browsed in the Atlas tab.
    """
    _gradio()
    from traitlens.app.ui import build_blocks

    if session is None:
        session = create_session(checkpoint, images, data=data, project=project, device=device, work=work,
                                 display_size=display_size, atlas=atlas)
    blocks = build_blocks(session)
    blocks.traitlens_session = session
    return blocks


def launch_options(host: str = "127.0.0.1", port: Optional[int] = 7860, share: bool = False) -> dict:
    """The keyword arguments of ``Blocks.launch`` that keep the app local and offline."""
    from traitlens.app.ui import CSS, theme

    _gradio()
    return dict(server_name=host, server_port=port, share=bool(share), theme=theme(), css=CSS, ssr_mode=False,
                mcp_server=False, show_error=True, quiet=True)


def host_warning(host: str) -> Optional[str]:
    """The warning printed when the app is bound to every network interface (None for a local address)."""
    if host in ("0.0.0.0", "::", ""):
        return (f"traitlens app: warning: --host {host or '(all)'} makes the app reachable from other machines on "
                "the network; anyone who can reach it can browse the images and run the model")
    return None


def serve(checkpoint: PathLike, images: PathLike, data: Optional[PathLike] = None, project: Optional[PathLike] = None,
          host: str = "127.0.0.1", port: int = 7860, share: bool = False, device: str = "cpu",
          block: bool = True, display_size: int = 224, atlas: Optional[PathLike] = None):
    """Build and launch the app; returns ``(blocks, local url)``. ``block=False`` returns at once (tests)."""
    warning = host_warning(host)
    if warning:
        print(warning, file=sys.stderr)
    app = build_app(checkpoint, images, data=data, project=project, device=device, display_size=display_size,
                    atlas=atlas)
    app.queue(default_concurrency_limit=4)
    _, url, share_url = app.launch(prevent_thread_lock=True, **launch_options(host, port, share))
    print(f"traitlens app: serving {checkpoint} over {images} at {url}" + (f" (share link: {share_url})"
                                                                             if share_url else ""), flush=True)
    if block:
        try:
            app.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            app.close()
    return app, url


__all__ = ["build_app", "create_session", "launch_options", "serve", "host_warning", "offline_environment"]

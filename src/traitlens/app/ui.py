"""The page: Explain, Heads and Segment tabs over an :class:`~traitlens.app.session.AppSession`.

Every handler here only moves values between gradio components and the session; what it computes is in
:mod:`traitlens.app.session` (unit-tested without a browser). A :class:`~traitlens.errors.UserError` (a bad
image, an unknown class) becomes a message in the page (``gr.Error``), never a dead page.
"""

import functools
import logging

from traitlens.app.explorer import COMPARISONS, METHOD_TITLES
from traitlens.errors import UserError

PREDICTED = "(predicted)"
TRUE_CLASS = "(true class)"
LOG = logging.getLogger("traitlens.app")

# The page loads nothing from the internet: system fonts only (the default theme would ask Google Fonts).
CSS = """
#tl-maps img { image-rendering: auto; }
.tl-small { font-size: 0.85em; }
"""


def theme():
    import gradio as gr

    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def _page_errors(fn):
    """Turn a UserError into a message shown in the page; anything else into a one-line message too."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the page must survive whatever a handler hits
            LOG.exception("handler %s failed", fn.__name__)
            raise gr.Error(f"unexpected error: {type(exc).__name__}: {exc}") from None

    return wrapped


def build_blocks(session):
    """The gradio Blocks of the app for ``session`` (see :func:`traitlens.app.build_app`)."""
    import gradio as gr

    ex = session.explorer
    classes = ex.class_names
    with gr.Blocks(title="traitlens explorer", analytics_enabled=False) as demo:
        gr.Markdown(f"## traitlens explorer · {session.title}", elem_id="tl-title")
        current = gr.State(None)     # {"id"|"path", ...}: the image the tabs look at
        cache = gr.State(None)       # the MapCache of the current image and settings
        shown = gr.State([])         # the ids in the thumbnail grid, in order
        canvas_source = gr.State(None)  # the image file in the Segment tab's editor

        with gr.Tabs():
            # ------------------------------------------------------------------------ Explain
            with gr.Tab("Explain", id="explain", elem_id="tab-explain"):
                with gr.Row():
                    with gr.Column(scale=2):
                        search = gr.Textbox(label="Search by species or file name", elem_id="tl-search",
                                            placeholder=", ".join(session.collection.species[:3]))
                        grid = gr.Gallery(label="Collection", columns=4, height=360, allow_preview=False,
                                          object_fit="contain", elem_id="tl-grid", format="png")
                        upload = gr.Image(label="…or upload an image", type="filepath", sources=["upload"],
                                          height=160, elem_id="tl-upload")
                    with gr.Column(scale=3):
                        # JPEG: encoding a 224 px PNG costs more than the whole α recombination (bench_app.py).
                        with gr.Row(elem_id="tl-maps"):
                            base_map = gr.Image(label="base CAM", format="jpeg", interactive=False,
                                                elem_id="tl-base-map", height=260)
                            finer_map = gr.Image(label="Finer-CAM", format="jpeg", interactive=False,
                                                 elem_id="tl-finer-map", height=260)
                        alpha = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="α (comparison strength)",
                                          info="0 = the base CAM; moving it recombines kept gradients, no model run",
                                          elem_id="tl-alpha")
                        with gr.Row():
                            method = gr.Dropdown([(METHOD_TITLES[m], m) for m in METHOD_TITLES], value="gradcam",
                                                 label="base CAM method", elem_id="tl-method")
                            target = gr.Dropdown([PREDICTED] + classes, value=PREDICTED, label="explained class",
                                                 elem_id="tl-target")
                        with gr.Row():
                            comparison = gr.Radio(list(COMPARISONS), value=next(iter(COMPARISONS)),
                                                  label="compared with", elem_id="tl-comparison")
                            chosen = gr.Dropdown(classes, value=[], multiselect=True, label="comparison classes",
                                                 elem_id="tl-chosen")
                        info = gr.Markdown("Choose an image from the collection, or upload one.", elem_id="tl-info")
                        with gr.Row():
                            top5 = gr.Label(num_top_classes=5, label="top-5 prediction", elem_id="tl-top5")
                            with gr.Column():
                                save = gr.Button("Download the map (PNG and .npy)", elem_id="tl-save")
                                files = gr.File(label="map files", file_count="multiple", interactive=False,
                                                elem_id="tl-files")

            # -------------------------------------------------------------------------- Heads
            with gr.Tab("Heads", id="heads", elem_id="tab-heads"):
                if ex.has_heads:
                    gr.Markdown("Per-head attention of the chosen class's prompt (Prompt-CAM) or query (INTR) on "
                                "the image chosen in the Explain tab. Trait heads, found by greedy head blurring, "
                                "are framed in red, most important first. Choosing another class looks at the "
                                "image through that class's prompt.")
                    with gr.Row():
                        head_class = gr.Dropdown([PREDICTED, TRUE_CLASS] + classes, value=PREDICTED,
                                                 label="class (prompt) to look through", elem_id="tl-head-class")
                        heads_n = int(getattr(ex.model, "num_heads", 12))
                        head_k = gr.Slider(1, heads_n, value=max(1, min(4, heads_n // 2)), step=1,
                                           label="trait heads kept at most", elem_id="tl-head-k")
                        head_go = gr.Button("Show heads", elem_id="tl-head-go")
                    head_info = gr.Markdown("", elem_id="tl-head-info")
                    with gr.Row():
                        head_grid = gr.Gallery(label="heads", columns=4, height="auto", allow_preview=False,
                                               elem_id="tl-head-grid", format="png")
                        head_mean = gr.Image(label="mean of the trait heads", format="png", interactive=False,
                                             elem_id="tl-head-mean", height=260)
                else:
                    gr.Markdown(f"This checkpoint is a **{ex.method or 'classifier'}** model. The Heads view shows "
                                "Prompt-CAM and INTR checkpoints (`traitlens train --method prompt-cam|intr`).",
                                elem_id="tl-head-info")

            # ------------------------------------------------------------------------ Segment
            with gr.Tab("Segment", id="segment", elem_id="tab-segment"):
                gr.Markdown("Label one specimen, propagate its parts to a folder, fix a result and propagate "
                            "again. The project folder holds everything `traitlens segment` needs to run the "
                            f"same job in bulk: `{session.project.folder}`.", elem_id="tl-seg-intro")
                with gr.Row():
                    with gr.Column(scale=2):
                        support_id = gr.Dropdown(session.collection_ids(), value=None, label="support specimen",
                                                 filterable=True, elem_id="tl-support")
                        parts = gr.Textbox(session.parts_text(), label="parts (one a line, 'id: name')", lines=4,
                                           elem_id="tl-parts")
                        legend = gr.Markdown(session.legend_markdown(session.parts_text()), elem_id="tl-legend")
                        label_file = gr.File(label="…or upload its label map (PNG, 0 = background)",
                                             file_types=["image"], elem_id="tl-label-file")
                    with gr.Column(scale=3):
                        editor = gr.ImageEditor(label="paint parts (brush colour = part), erase with the eraser",
                                                type="numpy", image_mode="RGBA", format="png", layers=False,
                                                transforms=(), sources=(), height=420, elem_id="tl-editor",
                                                brush=brush(session, session.parts_text()), eraser=gr.Eraser())
                with gr.Row():
                    add_support = gr.Button("Add as support", elem_id="tl-add-support")
                    clear_supports = gr.Button("Start over (no supports)", elem_id="tl-clear")
                    folder = gr.Textbox(str(session.collection.root), label="folder to propagate to",
                                        elem_id="tl-folder")
                    go = gr.Button("Propagate", variant="primary", elem_id="tl-propagate")
                    save_project = gr.Button("Save project", elem_id="tl-save-project")
                seg_status = gr.Markdown(session.project_markdown(), elem_id="tl-seg-status")
                results = gr.Gallery(label="results (select one to fix it)", columns=8, height=360,
                                     allow_preview=False, elem_id="tl-results", format="png")
            # -------------------------------------------------------------------------- Atlas
            with gr.Tab("Atlas", id="atlas", elem_id="tab-atlas"):
                atlas_view = getattr(session, "atlas", None)
                if atlas_view is not None:
                    gr.Markdown(atlas_view.summary(), elem_id="tl-atlas-info")
                    atlas_search = gr.Textbox(label="search species", elem_id="tl-atlas-search")
                    first = atlas_view.choices()
                    atlas_pair = gr.Dropdown(first, value=first[0][1] if first else None, label="species pair",
                                             filterable=True, elem_id="tl-atlas-pair")
                    atlas_card = gr.HTML(atlas_view.card(first[0][1]) if first else "", elem_id="tl-atlas-card")
                else:
                    gr.Markdown("Start the app with `--atlas DIR` (a folder written by `traitlens atlas`) to browse "
                                "which part tells each species pair apart.", elem_id="tl-atlas-info")

        # ------------------------------------------------------------------------------ events
        def grid_for(query):
            items, ids = session.grid(query)
            return items, ids

        search.change(_page_errors(grid_for), [search], [grid, shown], trigger_mode="always_last")
        demo.load(_page_errors(grid_for), [search], [grid, shown])

        map_outputs = [base_map, finer_map, top5, info, cache, current]

        def pick_from_grid(ids, evt: gr.SelectData):
            if evt.index is None or evt.index >= len(ids):
                raise UserError("choose an image of the grid")
            return {"id": ids[evt.index]}

        def pick_upload(path):
            return {"path": path} if path else gr.update()

        def reexplain(cur, a, m, t, comp, ch):
            if cur is None:
                return [gr.update()] * len(map_outputs)
            return session.explain(cur, a, m, _target(t), comp, ch)

        settings = [alpha, method, target, comparison, chosen]
        # Choosing an image sets the current image first (the Heads tab looks at it too), then explains it.
        grid.select(_page_errors(pick_from_grid), [shown], [current]).then(
            _page_errors(reexplain), [current] + settings, map_outputs, concurrency_limit=4)
        upload.upload(_page_errors(pick_upload), [upload], [current]).then(
            _page_errors(reexplain), [current] + settings, map_outputs, concurrency_limit=4)
        for control in (method, target, comparison, chosen):
            control.change(_page_errors(reexplain), [current] + settings, map_outputs, concurrency_limit=4,
                           trigger_mode="always_last")
        # The slider: no model run, only the recombination (never queued behind model work).
        alpha.change(_page_errors(session.rerender), [cache, alpha, current], [finer_map, info],
                     concurrency_limit=None, trigger_mode="always_last", show_progress="hidden")
        save.click(_page_errors(session.save_map), [cache, alpha, current], [files])

        if ex.has_heads:
            head_go.click(_page_errors(session.heads), [current, head_class, head_k],
                          [head_grid, head_mean, head_info], concurrency_limit=4)

        # Segment tab
        def parts_changed(text):
            return gr.ImageEditor(brush=brush(session, text)), session.legend_markdown(text)

        def labels_uploaded(file, source, text):
            value, text = session.upload_labels(file, source, text)
            return gr.ImageEditor(value=value, brush=brush(session, text)), text, session.legend_markdown(text)

        parts.change(_page_errors(parts_changed), [parts], [editor, legend])
        support_id.change(_page_errors(session.support_canvas), [support_id], [editor, canvas_source, seg_status])
        label_file.upload(_page_errors(labels_uploaded), [label_file, canvas_source, parts], [editor, parts, legend])
        add_support.click(_page_errors(session.add_support), [editor, canvas_source, parts], [seg_status])
        clear_supports.click(_page_errors(session.clear_supports), [], [seg_status])
        def fix_result(evt: gr.SelectData):
            return session.fix_result(evt.index)

        def propagate(path, progress=gr.Progress()):
            progress(0, desc="propagating")
            return session.propagate(path, on_progress=lambda done, total: progress((done, total), desc="propagating",
                                                                                   unit="images"))

        results.select(_page_errors(fix_result), None, [editor, canvas_source, seg_status])
        go.click(_page_errors(propagate), [folder], [results, seg_status], concurrency_limit=1)
        save_project.click(_page_errors(session.save_project), [], [seg_status])
        if getattr(session, "atlas", None) is not None:
            def atlas_choices(query):
                options = session.atlas.choices(query)
                return gr.Dropdown(choices=options, value=options[0][1] if options else None)

            atlas_search.change(_page_errors(atlas_choices), [atlas_search], [atlas_pair], trigger_mode="always_last")
            atlas_pair.change(_page_errors(lambda key: session.atlas.card(key) if key else ""), [atlas_pair],
                              [atlas_card])
    return demo


def brush(session, parts_text: str):
    """The editor's brush: one fixed colour per part (the colours of the segment overlays)."""
    import gradio as gr

    colours = session.brush_colours(parts_text)
    return gr.Brush(colors=colours, default_color=colours[0], color_mode="fixed")


def _target(value):
    return None if value in (None, "", PREDICTED) else value

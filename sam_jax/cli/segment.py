"""`sam-jax segment`: masks for images from point / box prompts on one or several objects,
of everything in them, or of every instance of a concept (SAM 3's text / exemplar prompts)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sam_jax.cli import flags
from sam_jax.cli.images import (
    draw_detections,
    draw_prompts,
    label_image,
    list_images,
    overlay,
    overlay_path,
    read_image,
    save_picture,
    save_png,
)

DESCRIPTION = f"""\
Segment IMAGES with a SAM / MobileSAM / SAM 2 / SAM 3 checkpoint. IMAGES is an image file,
a folder (its image files) or a quoted glob pattern such as 'photos/*.jpg'.

Outputs: for an image file, --out OUT.png; for a folder or pattern, --out DIR and, for each
image NAME.ext, DIR/NAME.png. Beside each PNG go NAME_overlay.png (the masks tinted on the
image) and NAME.json (a list of records, one per mask, holding the mask as --output-mode
says).

Prompted mode (--point / --box): with one object the PNG is its mask (255 inside, 0
outside); with several it is a label PNG (each object's pixels hold its id, 0 elsewhere;
where masks overlap the smaller one is on top). An object prompted with a single point and
no box keeps the best of three candidate masks; any other object gets one mask. Records:
object_id, segmentation, area, bbox [x, y, w, h], predicted_iou, point_coords,
point_labels, box [x0, y0, x1, y1] or null.

Everything mode (--everything): the PNG is a label PNG (0 = no mask, i = the i-th record;
16-bit when there are more than 255 masks; smaller masks on top). Records as Meta's
scripts/amg.py writes them, largest mask first: segmentation, area, bbox, predicted_iou,
point_coords, stability_score, crop_box.

Concept mode (--text CAPTION, repeatable, and/or exemplar --box X0,Y0,X1,Y1[,LABEL]):
every instance of each caption, found by SAM 3's concept model. With --text a SAM 3
torch file (sam3.pt) loads as variant sam3_semantic. A concept model without --text (a
.safetensors file saved from it, or --variant sam3_semantic) takes --box as exemplars of
the caption "visual".
Exemplar boxes go with one caption; LABEL 1 (default) marks a positive exemplar, 0 a
negative one. Instances scoring above --conf (0.25) are kept after non-maximum
suppression at --iou (0.7) per caption. The PNG is a label PNG (i = the i-th record,
16-bit past 255; smaller masks on top). Records, best score first: instance_id, caption,
score, box [x0, y0, x1, y1] (the detector's, pixels), segmentation, area, bbox [x, y, w, h]
(of the mask).

{flags.PROMPTS_HELP}"""
# How a command line that cannot run the concept model is told what it needs.
NEED_CONCEPT = (
    "text prompts need SAM 3's concept model: a SAM 3 checkpoint (sam3.pt, loaded as "
    "variant sam3_semantic) or a .safetensors file saved from it"
)


def _check_text(args: argparse.Namespace) -> None:
    """ValueError when --text comes with flags the concept model cannot take."""
    if args.point:
        raise ValueError(
            "--text finds every instance of a caption with SAM 3's concept model, which takes "
            "no clicks: drop --point (clicks prompt SAM 3's tracker: the checkpoint without "
            "--text)"
        )
    if args.everything:
        raise ValueError("--text segments a concept's instances, --everything all; drop one")
    if args.box and len(args.text) > 1:
        raise ValueError(f"exemplar boxes (--box) go with one caption; got {len(args.text)} --text")


def _check_request(args: argparse.Namespace) -> list[flags.ObjectPrompt]:
    """The prompted objects; ValueError when the flags ask for nothing or for both modes,
    or for an output mode that cannot run here."""
    for name in ("conf", "iou"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"--{name} must be in [0, 1]; got {value:g}")
    objects = [] if args.text else flags.group_prompts(args.point, args.box)
    if args.text:
        _check_text(args)
    elif args.everything and objects:
        raise ValueError("--everything segments the whole image; drop --point/--box or it")
    elif not args.everything and not objects:
        raise ValueError(
            f"nothing to segment: give --point {flags.POINT_METAVAR} and/or --box "
            f"{flags.BOX_METAVAR}, --everything, or --text CAPTION (SAM 3)"
        )
    if args.output_mode == "coco_rle":
        from sam_jax.predictors.amg_output import check_output_mode

        try:
            check_output_mode(args.output_mode)
        except ImportError as e:
            raise ValueError(str(e)) from e
    return objects


def _outputs(out: str, paths: list[Path], many: bool) -> list[Path]:
    """The output PNG of each image: `out` itself for one image file, else out/NAME.png."""
    if not many:
        if Path(out).suffix.lower() != ".png":
            raise ValueError(f"--out must be a .png path; got {out!r}")
        return [Path(out)]
    if Path(out).suffix.lower() == ".png" or Path(out).is_file():
        raise ValueError(
            f"--out must be a folder when IMAGES is a folder or a pattern; got {out!r}"
        )
    named: dict[str, Path] = {}
    for p in paths:
        if p.stem in named:
            raise ValueError(
                f"{named[p.stem]} and {p} would both write {Path(out) / p.stem}.png; "
                "rename one or segment them separately"
            )
        named[p.stem] = p
    return [Path(out) / f"{p.stem}.png" for p in paths]


def _warn_outside(objects: list[flags.ObjectPrompt], image: np.ndarray, path: Path) -> None:
    h, w = image.shape[:2]
    for obj in objects:
        for x, y in obj.points:
            if not (0 <= x < w and 0 <= y < h):
                print(
                    f"sam-jax: warning: point ({x:g}, {y:g}) lies outside the {w}x{h} image {path}",
                    file=sys.stderr,
                )


def _write_json(records: list[dict[str, Any]], keys: list[int], png: Path, mode: str) -> Path:
    """Write the records (segmentation an (H, W) bool mask) to png's .json, the masks as
    `mode` says; binary_mask writes mask `keys[i]` to NAME_masks/<key>.png."""
    from sam_jax.checkpoint import atomic_write
    from sam_jax.predictors.amg_output import encode_mask

    rows = []
    for key, r in zip(keys, records, strict=True):
        if mode == "binary_mask":
            rel = f"{png.stem}_masks/{key}.png"
            save_png(r["segmentation"].astype(np.uint8) * 255, png.parent / rel)
            seg = rel
        else:
            seg = encode_mask(r["segmentation"], mode)
        rows.append({**r, "segmentation": seg})
    path = png.with_suffix(".json")
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(rows)))
    return path


def _everything(
    args: argparse.Namespace, generator: Any, image: np.ndarray, png: Path
) -> tuple[Any, str]:
    """Write the label PNG and the records; return the overlay picture and a summary."""
    from PIL import Image

    records = sorted(generator.generate(image), key=lambda r: r["area"], reverse=True)
    masks = [r["segmentation"] for r in records]
    keys = list(range(1, len(records) + 1))
    save_png(label_image(image.shape[:2], masks, keys), png)
    _write_json(records, keys, png, args.output_mode)
    return Image.fromarray(overlay(image, masks)), f"{len(records)} masks"


def _object_record(predictor: Any, obj: flags.ObjectPrompt) -> dict[str, Any]:
    """Predict one object's mask on the predictor's image; its record (see DESCRIPTION)."""
    from sam_jax.predictors import amg

    clicks = len(obj.points) > 0
    masks, scores, _ = predictor.predict(
        point_coords=obj.points if clicks else None,
        point_labels=obj.labels if clicks else None,
        box=obj.box,
        multimask_output=len(obj.points) == 1 and obj.box is None,
    )
    best = int(np.argmax(scores))
    mask = masks[best]
    return {
        "object_id": obj.obj_id,
        "segmentation": mask,
        "area": int(mask.sum()),
        "bbox": amg.box_xyxy_to_xywh(amg.masks_to_boxes(mask)),
        "predicted_iou": float(scores[best]),
        "point_coords": obj.points.tolist(),
        "point_labels": obj.labels.tolist(),
        "box": None if obj.box is None else obj.box.tolist(),
    }


def _prompted(
    args: argparse.Namespace,
    predictor: Any,
    image: np.ndarray,
    png: Path,
    objects: list[flags.ObjectPrompt],
) -> tuple[Any, str]:
    """Write the mask (or label) PNG and the records; return the overlay picture (prompts
    drawn) and a summary."""
    from PIL import Image

    predictor.set_image(image)
    records = [_object_record(predictor, obj) for obj in objects]
    masks = [r["segmentation"] for r in records]
    keys = [obj.obj_id for obj in objects]
    save_png(label_image(image.shape[:2], masks, [255] if len(objects) == 1 else keys), png)
    _write_json(records, keys, png, args.output_mode)
    picture = Image.fromarray(overlay(image, masks))
    clicks = [(x, y, lab) for o in objects for (x, y), lab in zip(o.points, o.labels, strict=True)]
    draw_prompts(picture, clicks, [o.box for o in objects if o.box is not None])
    if len(records) == 1:
        r = records[0]
        return picture, f"mask of {r['area']} px, predicted IoU {r['predicted_iou']:.3f}"
    return picture, f"{len(records)} objects"


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model, params) of --checkpoint: with --text a torch file is read as SAM 3's concept
    model unless --variant says otherwise."""
    from sam_jax.checkpoint import TORCH_SUFFIXES, load

    torch_file = Path(args.checkpoint).suffix.lower() in TORCH_SUFFIXES
    if not (args.text and args.variant is None and torch_file):
        return load(args.checkpoint, variant=args.variant, image_size=args.image_size)
    try:
        return load(args.checkpoint, variant="sam3_semantic", image_size=args.image_size)
    except ValueError as e:
        why = str(e).splitlines()[0]  # the first of possibly many missing keys is enough
        raise ValueError(f"{NEED_CONCEPT}; {args.checkpoint} is not one ({why})") from e


def _check_model(args: argparse.Namespace, model: Any) -> bool:
    """Whether the loaded model is SAM 3's concept model; ValueError when the flags ask
    what it (or, for the other models, what they) cannot do."""
    from sam_jax.predictors.concept import is_concept_model

    concept = is_concept_model(model)
    name = model.config.name
    if concept and (args.point or args.everything):
        raise ValueError(
            f"{args.checkpoint} holds SAM 3's concept model ({name}): it takes --text "
            "captions and exemplar --box prompts, not --point or --everything"
        )
    if concept and any(b.obj is not None for b in args.box or []):
        raise ValueError("exemplar boxes describe one concept: drop @OBJ from --box")
    if concept:
        return True
    if args.text:
        raise ValueError(f"{NEED_CONCEPT}; {args.checkpoint} holds {name}")
    if args.conf is not None or args.iou is not None:
        raise ValueError("--conf / --iou apply to SAM 3's concept prompts (--text) only")
    if any(b.label == 0 for b in args.box or []):
        raise ValueError(
            "a --box with LABEL 0 is a negative exemplar, which only SAM 3's concept model "
            "(--text) takes"
        )
    return False


def _exemplars(args: argparse.Namespace) -> tuple[np.ndarray | None, np.ndarray | None]:
    """--box flags as exemplar boxes (K, 4) xyxy pixels and labels (K,), or (None, None)."""
    if not args.box:
        return None, None
    boxes = np.array([b[:4] for b in args.box], np.float32)
    return boxes, np.array([b.label for b in args.box], np.int32)


def _concept(
    args: argparse.Namespace, predictor: Any, image: np.ndarray, png: Path
) -> tuple[Any, str]:
    """Write the label PNG and the records of every instance the captions / exemplars
    find; return the overlay picture (exemplars and detections drawn) and a summary."""
    from PIL import Image

    from sam_jax.predictors import amg

    predictor.set_image(image)
    boxes, labels = _exemplars(args)
    found = predictor.predict(
        text=args.text, box=boxes, box_labels=labels, conf=args.conf, iou=args.iou
    )
    captions = [found.names[c] for c in found.classes]
    records = [
        {
            "instance_id": i + 1,
            "caption": captions[i],
            "score": float(found.scores[i]),
            "box": [float(v) for v in found.boxes[i]],
            "segmentation": mask,
            "area": int(mask.sum()),
            "bbox": amg.box_xyxy_to_xywh(amg.masks_to_boxes(mask)),
        }
        for i, mask in enumerate(found.masks)
    ]
    keys = [r["instance_id"] for r in records]
    save_png(label_image(image.shape[:2], list(found.masks), keys), png)
    _write_json(records, keys, png, args.output_mode)
    picture = Image.fromarray(overlay(image, list(found.masks)))
    draw_prompts(picture, [], boxes)
    draw_detections(picture, found.boxes, [f"{r['caption']} {r['score']:.2f}" for r in records])
    counts = ", ".join(f"{n} {captions.count(n)}" for n in dict.fromkeys(captions))
    return picture, f"{len(records)} instances" + (f" ({counts})" if counts else "")


def run(args: argparse.Namespace) -> None:
    """Segment the images args.image names as the flags say; write the outputs."""
    objects = _check_request(args)
    paths, many = list_images(args.image)
    pngs = _outputs(args.out, paths, many)

    from sam_jax import MaskGenerator, Predictor
    from sam_jax.predictors.concept import ConceptPredictor

    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    say(f"loading {args.checkpoint}")
    model, params = _load(args)
    concept = _check_model(args, model)
    size = f"{model.config.name}, {model.config.image_size} px input"
    if concept:
        predictor = ConceptPredictor(model, params)
    elif args.everything:
        options = flags.generator_options(args)
        generator = MaskGenerator(model, params, **options, progress=not args.quiet)
    else:
        predictor = Predictor(model, params)
    for path, png in zip(paths, pngs, strict=True):
        image = read_image(path)
        if concept:
            say(f"finding {', '.join(args.text or ['the exemplars'])} in {path} ({size})")
            picture, summary = _concept(args, predictor, image, png)
        elif args.everything:
            say(f"segmenting everything in {path} ({size})")
            picture, summary = _everything(args, generator, image, png)
        else:
            _warn_outside(objects, image, path)
            say(f"encoding {path} ({size})")
            picture, summary = _prompted(args, predictor, image, png, objects)
        over = overlay_path(png)
        save_picture(picture, over)
        print(f"{png} ({summary}), overlay {over}, records {png.with_suffix('.json')}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `segment` on the sub-command parsers `sub`."""
    p = sub.add_parser(
        "segment",
        help="segment images from --point/--box prompts (one or several objects) or "
        "--everything; writes a mask PNG, an overlay and JSON records per image",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "image",
        metavar="IMAGES",
        help="an image file (any format Pillow reads), a folder of images or a quoted glob pattern",
    )
    flags.add_checkpoint(p)
    flags.add_out(
        p,
        metavar="OUT.png",
        help="output mask PNG for an image file (overlay OUT_overlay.png, records OUT.json "
        "beside it); an output folder for a folder or pattern",
    )
    flags.add_prompts(p, box_labels=True)
    p.add_argument("--everything", action="store_true", help="segment everything (no prompts)")
    concept = p.add_argument_group("SAM 3 concept prompts")
    concept.add_argument(
        "--text",
        action="append",
        metavar="CAPTION",
        help="segment every instance of CAPTION with SAM 3's concept model (a SAM 3 torch "
        "file loads as variant sam3_semantic); repeatable",
    )
    concept.add_argument(
        "--conf", type=float, default=None, metavar="T", help="keep instances scoring > T (0.25)"
    )
    concept.add_argument(
        "--iou",
        type=float,
        default=None,
        metavar="T",
        help="drop an instance whose box IoU with a better one of its caption > T (0.7)",
    )
    flags.add_output_mode(p)
    flags.add_variant(p)
    flags.add_image_size(p)
    flags.add_generator_flags(p.add_argument_group("--everything options"))
    flags.add_quiet(p)
    p.set_defaults(run=run)

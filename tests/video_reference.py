"""A reference video tracker for parity tests: ultralytics' `SAM2Model.track_step` driven
frame by frame with Meta's per-object semantics, FULL history (nothing pruned) and float32
memories - the behaviour sam_jax.VideoPredictor reproduces.

Per object: prompts on an untracked frame make conditioning frames (no memory), prompts on
a tracked frame are corrections fed the previous logits and kept as non-conditioning
outputs (conditioning with add_all_frames_to_correct_as_cond, or if the frame already is
a conditioning frame); before propagating, prompted frames get memories encoded from
their binarised masks; while propagating, prompted frames keep their outputs and every
other frame is tracked (`track_step(..., run_mem_encoder=True)`) against the object's own
full output dict.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class RefVideoTracker:
    def __init__(self, model, images: np.ndarray, add_all_frames_to_correct_as_cond=False):
        """model: ultralytics SAM2Model (eval); images (T, S, S, 3) float32, normalised."""
        self.model = model
        self.model.binarize_mask_from_pts_for_mem_enc = True
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        self.num_frames = images.shape[0]
        self.image_size = images.shape[1]
        self.add_all = add_all_frames_to_correct_as_cond
        self.objs: dict = {}
        self._feats: dict = {}

    def _features(self, f):
        if f not in self._feats:
            with torch.no_grad():
                out = self.model.forward_image(self.images[f : f + 1])
                _, vis, pos, sizes = self.model._prepare_backbone_features(out)
            self._feats[f] = (vis, pos, sizes)  # short test videos: keep every frame
        return self._feats[f]

    def _obj(self, obj_id):
        if obj_id not in self.objs:
            self.objs[obj_id] = {
                "out": {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                "temp": {},
                "tracked": {},
                "prompted": set(),
                "points": {},
            }
        return self.objs[obj_id]

    def _prompt(self, obj_id, f, point_inputs, mask_inputs):
        o = self._obj(obj_id)
        is_init = f not in o["tracked"]
        reverse = False if is_init else o["tracked"][f]
        is_cond = is_init or self.add_all or f in o["out"]["cond_frame_outputs"]
        prev = None
        if point_inputs is not None:
            prev_out = (
                o["temp"].get(f, (None,))[0]
                or o["out"]["cond_frame_outputs"].get(f)
                or o["out"]["non_cond_frame_outputs"].get(f)
            )
            if prev_out is not None:
                prev = prev_out["pred_masks"].clamp(-32.0, 32.0)
        vis, pos, sizes = self._features(f)
        with torch.no_grad():
            out = self.model.track_step(
                frame_idx=f,
                is_init_cond_frame=is_init,
                current_vision_feats=vis,
                current_vision_pos_embeds=pos,
                feat_sizes=sizes,
                point_inputs=point_inputs,
                mask_inputs=mask_inputs,
                output_dict=o["out"],
                num_frames=self.num_frames,
                track_in_reverse=reverse,
                run_mem_encoder=False,
                prev_sam_mask_logits=prev,
            )
        o["temp"][f] = (out, is_cond)
        return out["pred_masks"][0, 0].numpy()

    def add_points(self, obj_id, f, coords, labels, clear_old_points=True):
        """coords (N, 2) model-input pixels (box corners first, labels 2/3), labels (N,)."""
        o = self._obj(obj_id)
        c = torch.as_tensor(np.asarray(coords, np.float32))[None]
        lab = torch.as_tensor(np.asarray(labels, np.int32))[None]
        if not clear_old_points and f in o["points"]:
            c = torch.cat([o["points"][f][0], c], 1)
            lab = torch.cat([o["points"][f][1], lab], 1)
        o["points"][f] = (c, lab)
        return self._prompt(obj_id, f, {"point_coords": c, "point_labels": lab}, None)

    def add_mask(self, obj_id, f, mask):
        """mask (S, S) 0/1 in the letterboxed frame."""
        m = torch.as_tensor(np.asarray(mask, np.float32))[None, None]
        return self._prompt(obj_id, f, None, m)

    def _preflight(self):
        s = self.image_size
        for o in self.objs.values():
            for f, (out, is_cond) in sorted(o["temp"].items()):
                vis, _, sizes = self._features(f)
                high = F.interpolate(
                    out["pred_masks"], (s, s), mode="bilinear", align_corners=False
                )
                with torch.no_grad():
                    mem, mem_pos = self.model._encode_new_memory(
                        current_vision_feats=vis,
                        feat_sizes=sizes,
                        pred_masks_high_res=high,
                        object_score_logits=out["object_score_logits"],
                        is_mask_from_pts=True,
                    )
                out["maskmem_features"], out["maskmem_pos_enc"] = mem, mem_pos
                key = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
                o["out"][key][f] = out
                if not is_cond:
                    o["prompted"].add(f)
            o["temp"].clear()
            for f in o["out"]["cond_frame_outputs"]:
                o["out"]["non_cond_frame_outputs"].pop(f, None)
                o["prompted"].discard(f)

    def propagate(self, start=None, max_frames=None, reverse=False):
        """Yields (frame_idx, {obj_id: low-res logits (S/4, S/4)})."""
        self._preflight()
        t = self.num_frames
        if start is None:
            start = min(min(o["out"]["cond_frame_outputs"]) for o in self.objs.values())
        n = t if max_frames is None else max_frames
        if reverse:
            end = max(start - n, 0)
            order = range(start, end - 1, -1) if start > 0 else []
        else:
            order = range(start, min(start + n, t - 1) + 1)
        for f in order:
            res = {}
            for obj_id, o in self.objs.items():
                cond, noncond = o["out"]["cond_frame_outputs"], o["out"]["non_cond_frame_outputs"]
                if f in cond:
                    out = cond[f]
                elif f in o["prompted"]:
                    out = noncond[f]
                else:
                    vis, pos, sizes = self._features(f)
                    with torch.no_grad():
                        out = self.model.track_step(
                            frame_idx=f,
                            is_init_cond_frame=False,
                            current_vision_feats=vis,
                            current_vision_pos_embeds=pos,
                            feat_sizes=sizes,
                            point_inputs=None,
                            mask_inputs=None,
                            output_dict=o["out"],
                            num_frames=t,
                            track_in_reverse=reverse,
                            run_mem_encoder=True,
                        )
                    noncond[f] = out
                o["tracked"][f] = reverse
                res[obj_id] = out["pred_masks"][0, 0].numpy()
            yield f, res

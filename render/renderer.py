"""The Phong renderer: a posed MMD model -> an RGBA image.

Usage::

    from mmdsynth.render import Framing, Lighting, ModelRenderer
    renderer = ModelRenderer(model, preset="tha1")          # uploads the model once
    framing = Framing.from_head("tha1", head_top, head_bottom, center_x)
    image = renderer.render_pose(pose, framing, Lighting(ambient=0.8))   # GPU skinning
    image = renderer.render(pose_model(model, pose), framing)            # CPU-posed mesh
    # image: (256, 256, 4) uint8 RGBA, straight alpha, row 0 at the top

Two ways in
-----------
* :meth:`ModelRenderer.render_pose` (fast path): morphs and forward kinematics
  on the CPU (:class:`mmdsynth.mmd.posing.Poser` ``.morph`` and ``.bones``),
  skinning in the vertex shader from a bone texture. Per frame it uploads the
  rows of the morphed rest positions that changed since the last frame, the
  UVs when a UV morph changed them, the bone texture (B x 64 bytes) and
  per-material uniforms. The shader reproduces
  :class:`mmdsynth.mmd.skinning.Skinner` (BDEF1/2/4, SDEF, QDEF) in float32;
  :meth:`ModelRenderer.skin_on_gpu` reads its result back for comparison with
  :func:`~mmdsynth.mmd.posing.pose_model`.
* :meth:`ModelRenderer.render` takes a :class:`~mmdsynth.mmd.posing.PosedMesh`
  (from ``pose_model`` or :func:`rest_mesh`) and uploads its positions and
  normals (N x 24 bytes) every frame.

Shading (per fragment, all colours linear in [0,1], no gamma)
-------------------------------------------------------------
With ``tex`` the material's texture sample (straight RGBA, after the material
morph texture tint; white when the material has no texture or its file is
missing), ``D`` the material diffuse RGBA, ``S``/``p`` its specular colour and
power, ``A`` the ambient light colour, ``C`` the directional light colour,
``l`` the (unit) direction the directional light travels, ``N`` the unit normal
in view space (flipped on the back faces of double-sided materials),
``V = (0, 0, 1)`` the direction to the (orthographic) viewer and
``R = reflect(l, N) = l - 2 (N.l) N``::

    rgb   = clamp( tex.rgb * D.rgb * (A + C * max(N.(-l), 0))
                   + S * C * [N.(-l) > 0] * max(R.V, 0) ^ max(p, 1e-4) , 0, 1)
    alpha = D.a * tex.a

This is the Phong reflection model (B. T. Phong, "Illumination for computer
generated pictures", CACM 18(6), 1975) with the texture modulating the ambient
and diffuse terms, under the ambient plus one directional white light of THA1's
data generation (Khungurn 2019, talking-head-anime write-up; DESIGN.md
"Lighting"). MMD's own material *ambient* colour does not participate: MMD uses
it as a constant emissive term (colour = D x light + ambient), which would wash
out the per-example ambient magnitude that THA1 varies; our ``A`` is a light,
not a material property. Toon textures and edges (outlines) are not drawn.
Sphere maps are off by default; ``sphere_maps=True`` samples the material's
sphere texture (after its material-morph tint) at ``(0.5 + 0.5 N.x, 0.5 - 0.5
N.y)`` and multiplies ``tex.rgb`` by it (mode 1, .sph) or adds it (mode 2, .spa)
before lighting; mode 3 (sub-texture) is treated as off. Material-morph tints
(``PosedMesh.material_tint_mul/add`` rows 0 and 1) apply to textured
materials' texture rgb as ``c' = mix(1, c * mul.rgb, mul.a)``, ``c'' =
clamp(c' + (c' - 1) * add.a, 0, 1) + add.rgb`` (babylon-mmd, as documented in
:mod:`mmdsynth.mmd.morphing`).

Fragments with ``alpha < 1/255`` are discarded (no colour, no depth write).
Materials are drawn in file order with depth test (less) and depth write; back
faces are culled unless the material is double-sided. Colour blends as
``src_alpha, one_minus_src_alpha`` and alpha as ``one, one_minus_src_alpha``
into a target cleared to (0,0,0,0), so the target holds premultiplied colour
and coverage; the resolve pass turns that into straight alpha (rgb / alpha
where the 8-bit alpha is > 0, exactly (0,0,0,0) elsewhere).

Materials whose every fragment is opaque (diffuse alpha 1, no texture or a
texture without alpha) are drawn without blending and with a shader without
the alpha test, which lets the rasteriser test depth early; the result is the
same. Each material uses the shader variant with only the features it needs
(:func:`mmdsynth.render.shaders.model_fs`).

Textures are uploaded once per model, premultiplied (so that mipmapping and
filtering do not bleed the colour of fully transparent texels into edges), with
mipmaps and repeat wrapping; the shader un-premultiplies each sample. Filtering
is trilinear on a GPU and bilinear in the nearest mip level on a software
rasteriser (:func:`default_texture_filter`).

Partial redraw
--------------
:meth:`ModelRenderer.render_pose` keeps the rest-pose image of each (output
size, framing, lighting) it draws and, for a pose, clears and redraws only the
rectangle of output pixels that the pose can change (the screen boxes of the
faces it moves or recolours, before and after), with the faces that reach it,
in file order, under a scissor; the rest of the image is the kept one. The
result is the full redraw's, byte for byte (the argument is in
:mod:`mmdsynth.render.redraw`; the tests compare both on many poses). It pays
off for the dataset's expression-only images (eyes and mouth: under a tenth
of the picture); when the rectangle exceeds 30% of the picture (a head
rotation moves head, hair and neck) the frame is drawn in full. Poses use one
depth range, :attr:`ModelRenderer.depth_range` (the rest box grown by its
diagonal), whenever their own range fits in it, so kept and new pixels share
depth values. ``partial_redraw=False`` turns it off.

Anti-aliasing
-------------
Two knobs: ``samples`` (MSAA samples per pixel, 0/1 = none) and
``supersample`` (render at ``supersample`` times the size, then a box filter
down). Both are averaged in premultiplied space by the resolve pass. Defaults
(``None``) depend on the context's renderer (:func:`default_antialiasing`):
on a GPU 4x MSAA (nearly free there); on a software rasteriser (llvmpipe) 2x2
supersampling without MSAA, which also gives 4 samples per pixel (alpha steps
of 1/4 along edges) and on llvmpipe costs less than its 4x MSAA.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import moderngl
import numpy as np

from mmdsynth.mmd.model import Material, Model, SphereMode
from mmdsynth.mmd.posing import Pose, PosedMesh, Poser

from . import shaders
from .context import RenderError, get_context, is_software_renderer
from .framing import MMD_TO_VIEW, Framing, Preset, get_preset
from .redraw import any_column, changed_rows, dirty_rect, face_boxes, faces_meeting, points_box

__all__ = ["Lighting", "ModelRenderer", "rest_mesh", "default_antialiasing", "default_texture_filter", "TEXTURE_FILTERS"]


def _rgb(value, name: str) -> tuple[float, float, float]:
    """A light colour: a magnitude (white light) or an (r, g, b) triple; finite, >= 0."""
    try:
        arr = np.asarray(value, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or an (r, g, b) triple, got {value!r}") from None
    if arr.shape == (1,):
        arr = np.repeat(arr, 3)
    if arr.shape != (3,):
        raise ValueError(f"{name} must be a number or an (r, g, b) triple, got {value!r}")
    if not (np.all(np.isfinite(arr)) and np.all(arr >= 0.0)):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


@dataclass(frozen=True)
class Lighting:
    """Lights of one render (THA1 defaults, DESIGN.md).

    * ``ambient``: ambient light magnitude (white), or an (r, g, b) colour.
      DESIGN.md draws it per example from U[0.5, 1.2]; the default 0.5 is the
      darkest of that range, at which a surface facing the light shows exactly
      its texture x diffuse colour (0.5 + 0.5 = 1).
    * ``directional``: directional light magnitude (white) or (r, g, b); 0.5.
    * ``direction``: the direction the light travels, in VIEW space (right-
      handed, +x right, +y up, +z toward the viewer); (0, 0, -1) = from the
      viewer onto the character's front. Normalised on use; must not be zero.

    Raises ValueError for negative or non-finite values or a zero direction.
    """

    ambient: float | tuple[float, float, float] = 0.5
    directional: float | tuple[float, float, float] = 0.5
    direction: tuple[float, float, float] = (0.0, 0.0, -1.0)

    def __post_init__(self):
        _rgb(self.ambient, "ambient")
        _rgb(self.directional, "directional")
        d = np.asarray(self.direction, np.float64).reshape(-1)
        if d.shape != (3,) or not np.all(np.isfinite(d)) or np.linalg.norm(d) < 1e-12:
            raise ValueError(f"light direction must be a finite non-zero (x, y, z), got {self.direction!r}")

    @property
    def ambient_rgb(self) -> tuple[float, float, float]:
        """Ambient light colour (r, g, b)."""
        return _rgb(self.ambient, "ambient")

    @property
    def directional_rgb(self) -> tuple[float, float, float]:
        """Directional light colour (r, g, b)."""
        return _rgb(self.directional, "directional")

    @property
    def unit_direction(self) -> tuple[float, float, float]:
        """``direction`` normalised (view space)."""
        d = np.asarray(self.direction, np.float64).reshape(-1)
        d = d / np.linalg.norm(d)
        return (float(d[0]), float(d[1]), float(d[2]))


def rest_mesh(model: Model) -> PosedMesh:
    """A :class:`PosedMesh` of the rest pose built straight from the model's
    arrays (no morphs, identity skinning). Shares the model's arrays (do not
    modify them); the materials list is a new list of the same objects."""
    b = len(model.bones)
    bone_transforms = np.tile(np.eye(4, dtype=np.float32), (b, 1, 1))
    for i, bone in enumerate(model.bones):
        bone_transforms[i, :3, 3] = bone.position
    return PosedMesh(
        positions=model.positions,
        normals=model.normals,
        uvs=model.uvs,
        additional_uvs=model.additional_uvs,
        materials=list(model.materials),
        bone_transforms=bone_transforms,
        skinning=np.tile(np.eye(4, dtype=np.float32), (b, 1, 1)),
    )


def default_antialiasing(software: bool | None = None) -> tuple[int, int]:
    """(samples, supersample) used when a renderer is built with ``None``:
    a software rasteriser -> (0, 2): no MSAA, 2x2 supersampling; a GPU -> (4, 1):
    4x MSAA. ``software`` None asks the process's context (may raise RenderError)."""
    if software is None:
        software = is_software_renderer()
    return (0, 2) if software else (4, 1)


TEXTURE_FILTERS = {
    # name: (minification, magnification)
    "trilinear": (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR),
    "bilinear": (moderngl.LINEAR_MIPMAP_NEAREST, moderngl.LINEAR),  # bilinear in the nearest mip level
}


def default_texture_filter(software: bool | None = None) -> str:
    """Texture filter used when a renderer is built with ``None``: ``"trilinear"``
    on a GPU; ``"bilinear"`` (in the nearest mip level) on a software rasteriser,
    where trilinear filtering costs about 10% of a frame and the 2x2
    supersampling already smooths mip-level seams."""
    if software is None:
        software = is_software_renderer()
    return "bilinear" if software else "trilinear"


@dataclass
class _Target:
    """Render targets of one output size."""

    fbo: moderngl.Framebuffer
    color: moderngl.Texture
    out_fbo: moderngl.Framebuffer
    size: tuple[int, int]
    objects: list = field(default_factory=list)


@dataclass
class _RestScene:
    """A kept rest-pose frame for partial redraws (one output size, framing and lighting)."""

    image: np.ndarray  # (H,W,4) uint8, the full render of the rest pose
    face_boxes: np.ndarray  # (F,4) float64 screen box of every face in the rest pose (pixels)
    # BonePose.moved.tobytes() of the bone motions whose redraw rectangle was too large
    # (a head rotation moves head, hair and neck): the next such pose is drawn in full at once.
    too_large: set = field(default_factory=set)


# Rest-pose frames kept per renderer (one per framing and lighting in use).
_SCENES_KEPT = 4
# A partial redraw saves time only for a small part of the image: its own work
# (finding what moved, reading the skinned vertices back) costs about as much
# as drawing the other part. Above this share of the image: a full redraw
# (measured on Gene, llvmpipe: a 8% rectangle costs 0.63x the CPU time of a full
# frame, a 46% one 1.09x).
_PARTIAL_MAX_AREA = 0.3


def _bounds(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) float64 (3,) of (N,3) points (N > 0). Reduces a transposed
    contiguous copy: numpy's axis-0 reduction over 3 columns is ~30x slower."""
    cols = np.ascontiguousarray(points.T)
    return cols.min(axis=1).astype(np.float64), cols.max(axis=1).astype(np.float64)


def _premultiply(rgba: np.ndarray) -> np.ndarray:
    """(H,W,4) uint8 straight -> premultiplied, C-contiguous uint8: each colour
    channel becomes round(c * a / 255). Pillow's ``RGBa`` mode does exactly
    this rounding in C (``MULDIV255``), several times faster than numpy."""
    from PIL import Image

    rgba = np.ascontiguousarray(rgba, np.uint8)
    return np.asarray(Image.fromarray(rgba, "RGBA").convert("RGBa"))


def _skin_attributes(poser: Poser, n: int) -> dict[str, np.ndarray]:
    """Per-vertex skinning inputs for the shader, taken from the Poser's
    :class:`~mmdsynth.mmd.skinning.Skinner` so the weights are exactly the CPU's
    (renormalised BDEF4, BDEF1/2 slots, invalid bones dropped).

    Returns bones (N,4) int32, weights (N,4) float32, kind (N,) int32 (0 linear
    blend, 1 SDEF, 2 QDEF), sdef_c / sdef_cr0 / sdef_cr1 (N,3) float32.
    Raises ValueError when a vertex has more than 4 linear-blend influences.
    """
    sk = poser.skinner
    bones = np.zeros((n, 4), np.int32)
    weights = np.zeros((n, 4), np.float32)
    kind = np.zeros(n, np.int32)
    v = np.asarray(sk.pair_vertex, np.int64)
    if v.size:
        order = np.argsort(v, kind="stable")
        v = v[order]
        starts = np.searchsorted(v, v, side="left")
        slot = np.arange(len(v)) - starts
        if slot.max() >= 4:
            raise ValueError("a vertex has more than 4 bone influences")
        bones[v, slot] = np.asarray(sk.pair_bone, np.int64)[order]
        weights[v, slot] = np.asarray(sk.pair_weight, np.float64)[order]
    sc = np.zeros((n, 3), np.float32)
    s0 = np.zeros((n, 3), np.float32)
    s1 = np.zeros((n, 3), np.float32)
    if sk.sdef_vertex.size:
        s = sk.sdef_vertex
        kind[s] = 1
        bones[s, :2] = sk.sdef_bones
        bones[s, 2:] = 0
        weights[s] = 0.0
        weights[s, 0] = sk.sdef_w0
        sc[s], s0[s], s1[s] = sk.sdef_c, sk.sdef_cr0, sk.sdef_cr1
    if sk.qdef_vertex.size:
        q = sk.qdef_vertex
        kind[q] = 2
        bones[q] = np.maximum(sk.qdef_bones, 0)
        weights[q] = np.where(sk.qdef_bones >= 0, sk.qdef_weights, 0.0)
    return {"bones": bones, "weights": weights, "kind": kind, "sdef_c": sc, "sdef_cr0": s0, "sdef_cr1": s1}


class ModelRenderer:
    """Draws one model; GPU buffers and textures are uploaded once at construction.

    Args:
        model: the model (its faces, UVs, normals, materials, skinning data and
            textures are read here; later changes to the Model object are not
            seen; build a new renderer).
        preset: default output size (``"tha1"``, ``"tha3"`` or a Preset); render
            targets for it are made now, others on first use.
        samples: MSAA samples per pixel (0 or 1: none; clamped to the driver's
            maximum); None: :func:`default_antialiasing`.
        supersample: render at this many times the output size and box-filter
            down (>= 1); None: :func:`default_antialiasing`.
        sphere_maps: apply the materials' sphere maps (.sph multiply, .spa add).
        texture_filter: ``"trilinear"`` or ``"bilinear"`` (mipmapped either
            way); None: :func:`default_texture_filter`.
        partial_redraw: let :meth:`render_pose` repaint only the part of the
            image a pose changes, over a kept rest-pose image (same pixels as
            a full redraw; see :mod:`mmdsynth.render.redraw`). False: draw
            every frame in full.

    Raises:
        RenderError: no GL context, or GL resources cannot be created.
        ValueError: bad ``samples``/``supersample``/``texture_filter``, or faces
            refer to missing vertices.

    One renderer per model, used from one thread. Call :meth:`release` (or use
    it as a context manager) to free GPU memory early.
    """

    def __init__(self, model: Model, preset: str | Preset = "tha1", samples: int | None = None,
                 supersample: int | None = None, sphere_maps: bool = False, texture_filter: str | None = None,
                 partial_redraw: bool = True):
        self.ctx = get_context()
        self.model = model
        self.preset = get_preset(preset)
        auto_samples, auto_ss = default_antialiasing()
        samples = auto_samples if samples is None else int(samples)
        supersample = auto_ss if supersample is None else int(supersample)
        if samples < 0 or supersample < 1:
            raise ValueError(f"samples must be >= 0 and supersample >= 1 (got {samples}, {supersample})")
        #: MSAA samples per pixel of the render target (0: none).
        self.samples = 0 if samples <= 1 else min(samples, int(self.ctx.max_samples))
        #: Supersampling factor of the render target (1: none).
        self.supersample = supersample
        self.sphere_maps = bool(sphere_maps)
        texture_filter = default_texture_filter() if texture_filter is None else texture_filter
        if texture_filter not in TEXTURE_FILTERS:
            raise ValueError(f"texture_filter must be one of {', '.join(TEXTURE_FILTERS)}, got {texture_filter!r}")
        #: Texture filter name (see TEXTURE_FILTERS).
        self.texture_filter = texture_filter
        self._objects: list = []
        self._targets: dict[tuple[int, int], _Target] = {}
        self._textures: dict[int, moderngl.Texture | None] = {}
        self._opaque_textures: set[int] = set()  # id() of GL textures whose alpha is 255 everywhere
        self._poser: Poser | None = None
        self._gpu = None  # GPU-skinning resources, made on first render_pose
        self._last_morph: tuple | None = None  # (morph items, MorphResult) of the last pose
        #: Whether :meth:`render_pose` repaints only what a pose changes.
        self.partial_redraw = bool(partial_redraw)
        self._scenes: OrderedDict = OrderedDict()  # (size, framing, lighting) -> _RestScene, LRU
        self._released = False
        try:
            self._upload(model)
            self._target(self.preset.width, self.preset.height)
        except moderngl.Error as exc:
            self.release()
            raise RenderError(f"cannot create GL resources: {' '.join(str(exc).split())}") from None

    # ------------------------------------------------------------------ setup

    def _keep(self, obj):
        self._objects.append(obj)
        return obj

    def _upload(self, model: Model) -> None:
        ctx = self.ctx
        n = model.vertex_count
        faces = np.ascontiguousarray(model.faces, dtype=np.uint32).reshape(-1, 3)
        if faces.size and int(faces.max()) >= n:
            raise ValueError(f"a face refers to vertex {int(faces.max())} of {n}")
        self.n_vertices = n
        self.n_faces = len(faces)
        # (first face, face count) per material, clipped to the faces present.
        ranges, start = [], 0
        for mat in model.materials:
            count = max(0, min(int(mat.face_count), self.n_faces - start))
            ranges.append((start, count))
            start += count
        self.ranges = ranges
        self.faces = faces
        #: (F,) int32 material of each face (-1: beyond the materials' face counts, never drawn).
        self.face_material = np.full(self.n_faces, -1, np.int32)
        for i, (first, count) in enumerate(ranges):
            self.face_material[first:first + count] = i

        vbytes = max(n, 1)
        # Faces, then room for the faces a partial redraw draws (a subset, in the same order).
        self.ibo = self._keep(ctx.buffer(faces.tobytes() * 2 if faces.size else bytes(12)))
        self.pos_buf = self._keep(ctx.buffer(reserve=vbytes * 12, dynamic=True))
        self.nrm_buf = self._keep(ctx.buffer(reserve=vbytes * 12, dynamic=True))
        self.uv_buf = self._keep(ctx.buffer(reserve=vbytes * 8, dynamic=True))
        # Copies of what pos_buf / uv_buf hold, to upload only the rows that change.
        self._last_positions: np.ndarray | None = None
        self._last_uvs: np.ndarray | None = None
        self._write_uvs(model.uvs)
        rest = np.ascontiguousarray(model.positions, np.float32)
        self.rest_pos_buf = self._keep(ctx.buffer(rest.tobytes() or bytes(12)))
        self.rest_nrm_buf = self._keep(ctx.buffer(np.ascontiguousarray(model.normals, np.float32).tobytes() or bytes(12)))
        if n:
            lo, hi = _bounds(rest)
        else:
            lo = hi = np.zeros(3)
        self.rest_bounds = (lo, hi)
        self._rest_positions = rest
        self._rest_uvs = np.ascontiguousarray(model.uvs, np.float32)
        # The depth range of render_pose whenever the pose's own range fits in
        # it: the rest box's Z grown by its diagonal (a rotation about a pivot
        # inside the box cannot carry a vertex farther). One range for most
        # poses makes frames comparable depth value for depth value, which the
        # partial redraw needs; poses that leave it get their own range.
        reach = float(np.linalg.norm(hi - lo))
        self.depth_range = self._padded(float(lo[2]) - reach, float(hi[2]) + reach, 0.25, 1.0)

        # Material-pass programs, one per feature combination (shaders.model_fs), made on first use.
        self._programs: dict[tuple, moderngl.Program] = {}
        self._vaos: dict[tuple, moderngl.VertexArray] = {}
        self._frame = 0  # counts render calls; programs get the frame's uniforms on first use
        self._frame_of: dict[tuple, int] = {}
        self._frame_uniforms: dict = {}
        self.flat_prog = self._keep(ctx.program(vertex_shader=shaders.FLAT_VS, fragment_shader=shaders.FLAT_FS))
        self.flat_vao = self._keep(ctx.vertex_array(self.flat_prog, [(self.rest_pos_buf, "3f", "in_position")],
                                                    index_buffer=self.ibo, index_element_size=4))
        self.resolve_prog = self._keep(ctx.program(
            vertex_shader=shaders.FULLSCREEN_VS,
            fragment_shader=shaders.resolve_fs(self.supersample, max(self.samples, 1))))
        self.resolve_vao = self._keep(ctx.vertex_array(self.resolve_prog, []))
        self.resolve_prog["u_src"].value = 0

        # Textures used by materials, uploaded once each (shared between materials).
        self.mat_textures = []
        self.mat_spheres = []
        for mat in model.materials:
            self.mat_textures.append(self._texture(model, mat.texture_index))
            sphere = None
            if self.sphere_maps and mat.sphere_mode in (SphereMode.MULTIPLY, SphereMode.ADD):
                sphere = self._texture(model, mat.sphere_index)
            self.mat_spheres.append(sphere)

    def _texture(self, model: Model, index: int) -> moderngl.Texture | None:
        if index is None or index < 0:
            return None
        if index in self._textures:
            return self._textures[index]
        image = model.texture_image(index)
        tex = None
        if image is not None:
            # Same decoded array (two names for one file) -> one GL texture.
            for other_index, other in self._textures.items():
                if other is not None and model.texture_image(other_index) is image:
                    tex = other
                    break
            if tex is None:
                h, w = image.shape[:2]
                opaque = int(image[..., 3].min()) == 255
                # Alpha 255 everywhere: premultiplying changes nothing.
                data = np.ascontiguousarray(image, np.uint8) if opaque else _premultiply(image)
                tex = self._keep(self.ctx.texture((w, h), 4, data.tobytes()))
                if opaque:
                    self._opaque_textures.add(id(tex))
                tex.repeat_x = tex.repeat_y = True
                tex.build_mipmaps()
                tex.filter = TEXTURE_FILTERS[self.texture_filter]
        self._textures[index] = tex
        return tex

    def _target(self, width: int, height: int) -> _Target:
        key = (int(width), int(height))
        target = self._targets.get(key)
        if target is not None:
            return target
        if key[0] < 1 or key[1] < 1:
            raise ValueError(f"bad output size {key}")
        ctx = self.ctx
        ss = self.supersample
        size = (key[0] * ss, key[1] * ss)
        limit = int(ctx.info.get("GL_MAX_TEXTURE_SIZE", 16384))
        if max(size) > limit:
            raise RenderError(f"render target {size[0]}x{size[1]} exceeds the driver's maximum texture size {limit}")
        color = ctx.texture(size, 4, samples=self.samples)
        depth = ctx.depth_renderbuffer(size, samples=self.samples)
        fbo = ctx.framebuffer(color_attachments=[color], depth_attachment=depth)
        out_color = ctx.renderbuffer(key, 4)
        out_fbo = ctx.framebuffer(color_attachments=[out_color])
        target = _Target(fbo, color, out_fbo, key, [fbo, out_fbo, color, depth, out_color])
        self._targets[key] = target
        return target

    def _gpu_resources(self):
        """Skinning program (transform feedback), static skinning attributes,
        the bone texture and the skinned position/normal buffers (first use)."""
        if self._gpu is not None:
            return self._gpu
        ctx = self.ctx
        n = self.n_vertices
        attrs = _skin_attributes(self.poser, n)
        nb = max(len(self.model.bones), 1)
        try:
            bone_tex = self._keep(ctx.texture((5, nb), 4, dtype="f4"))
            bone_tex.filter = (moderngl.NEAREST, moderngl.NEAREST)
            bufs = {k: self._keep(ctx.buffer(np.ascontiguousarray(v).tobytes() or bytes(16))) for k, v in attrs.items()}
            sk = self.poser.skinner
            skin_prog = self._keep(ctx.program(vertex_shader=shaders.skin_vs(sk.sdef_vertex.size > 0, sk.qdef_vertex.size > 0),
                                               varyings=["tf_position", "tf_normal"]))
            skin_prog["u_bones"].value = 2
            inputs = [
                (self.pos_buf, "3f", "in_position"),
                (self.rest_nrm_buf, "3f", "in_normal"),
                (bufs["bones"], "4i", "in_bones"),
                (bufs["weights"], "4f", "in_weights"),
                (bufs["kind"], "i", "in_kind"),
                (bufs["sdef_c"], "3f", "in_sdef_c"),
                (bufs["sdef_cr0"], "3f", "in_sdef_cr0"),
                (bufs["sdef_cr1"], "3f", "in_sdef_cr1"),
            ]
            # Inputs of deform types the model lacks are compiled out.
            skin_vao = self._keep(ctx.vertex_array(skin_prog, [c for c in inputs if c[2] in skin_prog]))
            # Skinned vertices, interleaved position + normal (what the feedback writes).
            skinned = self._keep(ctx.buffer(reserve=max(n, 1) * 24))
        except moderngl.Error as exc:
            raise RenderError(f"cannot create GPU skinning resources: {' '.join(str(exc).split())}") from None
        # Which bones each vertex reads, as the shader does: (N,4) bones and (N,4) bool "used"
        # (a weight, or the SDEF pair); a vertex none of whose used bones moved is kept bit for bit.
        uses = attrs["weights"] != 0.0
        uses[attrs["kind"] == 1, :2] = True
        self._gpu = {"skin_vao": skin_vao, "bone_tex": bone_tex, "skinned": skinned,
                     "influences": [(np.ascontiguousarray(attrs["bones"][:, k]), np.ascontiguousarray(uses[:, k]))
                                    for k in range(4)]}
        return self._gpu

    @property
    def poser(self) -> Poser:
        """The :class:`~mmdsynth.mmd.posing.Poser` of this renderer's model (made on first use)."""
        if self._poser is None:
            self._poser = Poser(self.model)
        return self._poser

    # ------------------------------------------------------------------ per frame

    def _write_rows(self, buf: moderngl.Buffer, data: np.ndarray, last: np.ndarray | None) -> np.ndarray:
        """Write the rows of ``data`` (N,K) float32 that differ from ``last`` (what
        ``buf`` holds; None: unknown) as one contiguous range; returns the new copy."""
        if last is None or last.shape != data.shape:
            if data.size:
                buf.write(data)
            return data.copy()
        # Flat comparison: much faster in numpy than any(axis=1) over K columns.
        changed = np.flatnonzero(data.ravel() != last.ravel())
        if changed.size:
            k = data.shape[1]
            lo, hi = int(changed[0]) // k, int(changed[-1]) // k + 1
            buf.write(data[lo:hi], offset=lo * k * 4)
            last[lo:hi] = data[lo:hi]
        return last

    def _write_uvs(self, uvs: np.ndarray) -> None:
        """Upload the UVs that changed (UV morphs are rare)."""
        data = np.ascontiguousarray(uvs, np.float32)
        if data.shape != (self.n_vertices, 2):
            raise ValueError(f"uvs have shape {data.shape}, the model has {self.n_vertices} vertices")
        self._last_uvs = self._write_rows(self.uv_buf, data, self._last_uvs)

    def _write_positions(self, positions: np.ndarray) -> np.ndarray:
        """Upload the rows of ``positions`` (N,3) that changed; returns them as float32."""
        data = np.ascontiguousarray(positions, np.float32)
        if data.shape != (self.n_vertices, 3):
            raise ValueError(f"positions have shape {data.shape}, the model has {self.n_vertices} vertices")
        if not np.all(np.isfinite(data)):
            raise ValueError("positions contain NaN or infinity")
        self._last_positions = self._write_rows(self.pos_buf, data, self._last_positions)
        return data

    def _set_frame(self, target: _Target, framing: Framing, lighting: Lighting, z_range: tuple[float, float],
                   scissor: tuple[int, int, int, int] | None = None) -> None:
        """Bind ``target``'s render framebuffer, set the frame's uniforms and
        clear it; ``scissor`` (x, y, w, h in framebuffer pixels, GL's bottom-up
        rows): clear and later draw only there."""
        ctx = self.ctx
        self._frame += 1
        self._frame_uniforms = {
            "u_proj": np.ascontiguousarray(framing.projection(*z_range).T, np.float32).tobytes(),
            "u_ambient_light": lighting.ambient_rgb,
            "u_light_color": lighting.directional_rgb,
            "u_light_dir": lighting.unit_direction,
        }
        target.fbo.scissor = scissor
        target.fbo.use()
        ctx.viewport = (0, 0, target.fbo.width, target.fbo.height)
        target.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=scissor)
        ctx.enable(moderngl.DEPTH_TEST)
        ctx.depth_func = "<"
        ctx.blend_func = (moderngl.SRC_ALPHA, moderngl.ONE_MINUS_SRC_ALPHA, moderngl.ONE, moderngl.ONE_MINUS_SRC_ALPHA)
        ctx.blend_equation = moderngl.FUNC_ADD
        ctx.front_face = "cw"  # PMX/PMD front faces are clockwise on screen (see framing.py)
        ctx.cull_face = "back"

    def _vao(self, features: tuple, source: str) -> moderngl.VertexArray:
        """The vertex array of the material program with ``features`` (the
        keyword arguments of :func:`shaders.model_fs`, as a tuple) reading
        ``source`` vertices: ``"cpu"`` (CPU-posed positions and normals),
        ``"gpu"`` (GPU-skinned) or ``"morphed"`` (morphed rest positions with
        the rest normals: the skeleton is at rest); the frame's uniforms are
        set on its program when it is first used in a frame."""
        prog = self._programs.get(features)
        if prog is None:
            prog = self._keep(self.ctx.program(vertex_shader=shaders.MODEL_VS,
                                               fragment_shader=shaders.model_fs(**dict(features))))
            prog["u_view"].write(np.ascontiguousarray(MMD_TO_VIEW.T, np.float32).tobytes())
            for name, unit in (("u_texture", 0), ("u_sphere", 1)):
                if name in prog:
                    prog[name].value = unit
            self._programs[features] = prog
        if self._frame_of.get(features) != self._frame:
            for name, value in self._frame_uniforms.items():
                if name not in prog:
                    continue
                if isinstance(value, bytes):
                    prog[name].write(value)
                else:
                    prog[name].value = value
            self._frame_of[features] = self._frame
        key = (features, source)
        vao = self._vaos.get(key)
        if vao is None:
            if source == "gpu":
                content = [(self._gpu["skinned"], "3f 3f", "in_position", "in_normal")]
            else:
                normals = self.nrm_buf if source == "cpu" else self.rest_nrm_buf
                content = [(self.pos_buf, "3f", "in_position"), (normals, "3f", "in_normal")]
            if "in_uv" in prog:  # untextured variants have no UVs
                content.append((self.uv_buf, "2f", "in_uv"))
            vao = self._keep(self.ctx.vertex_array(prog, content, index_buffer=self.ibo, index_element_size=4))
            self._vaos[key] = vao
        return vao

    def _draw_materials(self, source: str, materials: list[Material],
                        tint_mul: np.ndarray | None, tint_add: np.ndarray | None,
                        ranges: list[tuple[int, int]] | None = None) -> None:
        """Draw every material in file order with the shader variant it needs;
        ``ranges``: (first face in the index buffer, face count) per material
        (None: all the model's faces, :attr:`ranges`)."""
        ctx = self.ctx
        ranges = self.ranges if ranges is None else ranges
        if len(materials) != len(ranges):
            raise ValueError(f"{len(materials)} materials given, the model has {len(ranges)}")
        culling = None
        blending = None
        for i, (mat, (first, count)) in enumerate(zip(materials, ranges)):
            alpha = float(mat.diffuse[3])
            if count == 0 or not alpha >= 1.0 / 255.0:
                continue  # nothing to draw / every fragment would be discarded
            double_sided = mat.double_sided
            if (not double_sided) != culling:
                (ctx.disable if double_sided else ctx.enable)(moderngl.CULL_FACE)
                culling = not double_sided
            tex = self.mat_textures[i]
            sphere = self.mat_spheres[i]
            texture_alpha = tex is not None and id(tex) not in self._opaque_textures
            # Opaque everywhere: no blending (the same result: alpha is exactly 1).
            blend = texture_alpha or alpha < 1.0
            if blending != blend:
                (ctx.enable if blend else ctx.disable)(moderngl.BLEND)
                blending = blend
            mul = tint_mul[i, :2] if tint_mul is not None else None
            add = tint_add[i, :2] if tint_add is not None else None
            tinted = (mul is not None and bool(np.any(mul != 1.0))) or (add is not None and bool(np.any(add != 0.0)))
            features = (
                ("has_texture", tex is not None),
                ("texture_alpha", texture_alpha),
                ("tint", tinted and (tex is not None or sphere is not None)),
                ("specular", any(float(c) != 0.0 for c in mat.specular)),
                ("sphere", int(mat.sphere_mode) if sphere is not None else 0),
                ("double_sided", double_sided),
            )
            vao = self._vao(features, source)
            prog = vao.program
            if tex is not None:
                tex.use(0)
            if sphere is not None:
                sphere.use(1)
            if tinted:
                for name, row in (("u_tex_mul", mul[0] if mul is not None else (1, 1, 1, 1)),
                                  ("u_tex_add", add[0] if add is not None else (0, 0, 0, 0)),
                                  ("u_sph_mul", mul[1] if mul is not None else (1, 1, 1, 1)),
                                  ("u_sph_add", add[1] if add is not None else (0, 0, 0, 0))):
                    if name in prog:
                        prog[name].value = tuple(float(v) for v in row)
            prog["u_diffuse"].value = tuple(float(v) for v in mat.diffuse)
            if "u_specular" in prog:
                prog["u_specular"].value = tuple(float(v) for v in mat.specular)
                prog["u_power"].value = float(mat.specular_power)
            vao.render(moderngl.TRIANGLES, vertices=3 * count, first=3 * first)

    def _resolve_and_read(self, target: _Target, rect: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Resolve the render target into the output image and read it back:
        (H,W,4) uint8, row 0 at the top; with ``rect`` (x0, y0, x1, y1 output
        pixels, row 0 at the top, half-open) only that part, (y1-y0, x1-x0, 4)."""
        ctx = self.ctx
        w, h = target.size
        # The resolve pass writes output row y (from the top) at the output
        # framebuffer's row y, so a rectangle keeps its rows there.
        x0, y0, x1, y1 = rect if rect is not None else (0, 0, w, h)
        view = (x0, y0, x1 - x0, y1 - y0)
        target.out_fbo.scissor = view if rect is not None else None
        target.out_fbo.use()
        ctx.viewport = (0, 0, w, h)
        ctx.disable(moderngl.BLEND | moderngl.DEPTH_TEST | moderngl.CULL_FACE)
        target.color.use(0)
        self.resolve_prog["u_out_height"].value = h
        self.resolve_vao.render(moderngl.TRIANGLES, vertices=3)
        buf = bytearray(view[2] * view[3] * 4)
        target.out_fbo.read_into(buf, viewport=view, components=4, alignment=1)
        return np.frombuffer(buf, np.uint8).reshape(view[3], view[2], 4)

    @staticmethod
    def _padded(z_min: float, z_max: float, rel: float, absolute: float) -> tuple[float, float]:
        pad = rel * (z_max - z_min) + absolute
        return z_min - pad, z_max + pad

    def _check(self) -> None:
        if self._released:
            raise RenderError("this ModelRenderer was released")

    def render(self, posed: PosedMesh, framing: Framing, lighting: Lighting | None = None) -> np.ndarray:
        """Draw a posed mesh of this renderer's model and read it back.

        Args:
            posed: positions/normals (N,3) float32 in MMD space and MMD units,
                uvs (N,2), materials after material morphs (diffuse, specular,
                specular_power are used; same count and order as the model's),
                optional material tints.
            framing: camera and output size (:class:`Framing`).
            lighting: lights; None: ``Lighting()`` (THA1 defaults).

        Returns:
            (framing.height, framing.width, 4) uint8 RGBA, straight alpha, row 0
            at the top; pixels the model does not cover are exactly (0,0,0,0).
            A new writable array each call.

        Raises:
            ValueError: array shapes or material count do not match the model,
                non-finite positions.
            RenderError: the renderer was released.
        """
        self._check()
        lighting = lighting if lighting is not None else Lighting()
        target = self._target(framing.width, framing.height)
        positions = self._write_positions(posed.positions)
        normals = np.ascontiguousarray(posed.normals, np.float32)
        if normals.shape != (self.n_vertices, 3):
            raise ValueError(f"normals have shape {normals.shape}, the model has {self.n_vertices} vertices")
        if self.n_vertices:
            self.nrm_buf.write(normals)
        self._write_uvs(posed.uvs)
        z_range = self._padded(*self._z_bounds(positions), 0.01, 1e-3) if self.n_vertices else (-1.0, 1.0)
        self._set_frame(target, framing, lighting, z_range)
        materials = posed.materials if posed.materials is not None else self.model.materials
        self._draw_materials("cpu", materials, getattr(posed, "material_tint_mul", None),
                             getattr(posed, "material_tint_add", None))
        return self._resolve_and_read(target)

    def _prepare_pose(self, pose: Pose | None, skin: bool = True):
        """Morphs and forward kinematics on the CPU; uploads morphed rest
        positions (changed rows), UVs (changed rows) and the bone texture, then
        skins every vertex once on the GPU (transform feedback into the
        skinned-vertex buffer). Returns (morph result, bone pose, GPU resources,
        morphed positions (N,3) float32).

        With ``skin`` False and a pose that leaves every bone at rest (no bone
        rotation or translation, no bone morph: an expression-only pose), the
        forward kinematics and the skinning pass are skipped: the skinning
        shader maps a vertex of unmoved bones to itself exactly, so drawing the
        morphed rest positions with the rest normals gives the same pixels.
        The bone pose returned is then None."""
        poser = self.poser
        pose = pose if pose is not None else Pose()
        # The dataset renders an expression-only and a full pose with the same
        # morphs one after the other: evaluate them once.
        try:
            key = tuple((k, float(v)) for k, v in pose.morphs.items())
        except (TypeError, ValueError):
            key = None  # a bad weight: poser.morph says what is wrong
        if key is not None and self._last_morph is not None and self._last_morph[0] == key:
            morphed = self._last_morph[1]
        else:
            morphed = poser.morph(pose)
            self._last_morph = (key, morphed)
        if not skin and poser.skeleton_at_rest(pose, morphed):
            positions = self._write_positions(morphed.positions)
            self._write_uvs(morphed.uvs)
            return morphed, None, None, positions
        gpu = self._gpu_resources()
        bones = poser.bones(pose, morphed)
        positions = self._write_positions(morphed.positions)
        self._write_uvs(morphed.uvs)
        nb = len(self.model.bones)
        if nb:
            m = bones.skinning_matrices()  # (B,4,4) float32, [R | s]
            texels = np.zeros((nb, 5, 4), np.float32)
            texels[:, :3, :] = m[:, :3, :]
            texels[:, 3, :] = bones.global_rotations
            texels[:, 4, 0] = bones.moved
            gpu["bone_tex"].write(texels)
        if self.n_vertices:
            # Some drivers (llvmpipe) skip draws, transform feedback included,
            # while no complete framebuffer is bound.
            self._target(self.preset.width, self.preset.height).out_fbo.use()
            gpu["bone_tex"].use(2)
            gpu["skin_vao"].transform(gpu["skinned"], mode=moderngl.POINTS, vertices=self.n_vertices)
        return morphed, bones, gpu, positions

    def render_pose(self, pose: Pose | None, framing: Framing, lighting: Lighting | None = None) -> np.ndarray:
        """Pose this renderer's model with GPU skinning and draw it (the fast path).

        Morphs and forward kinematics run on the CPU (this renderer's
        :attr:`poser`), skinning in the vertex shader (reproducing
        :func:`~mmdsynth.mmd.posing.pose_model`'s skinning in float32). A pose
        that moves no bone (e.g. the dataset's expression-only ``morphed``
        image) skips the kinematics and the skinning pass, with the same
        pixels. With :attr:`partial_redraw` only the part of the picture the
        pose changes is redrawn over the kept rest-pose image (module
        docstring, "Partial redraw"), again with the same pixels.

        Args:
            pose: a :class:`~mmdsynth.mmd.posing.Pose` (None: the rest pose).
            framing, lighting: as :meth:`render`.

        Returns:
            The image, as :meth:`render`.

        Raises:
            KeyError: the pose names an unknown morph or bone.
            ValueError: a bad pose value (see :meth:`Poser.pose`).
            RenderError: the renderer was released or GPU resources failed.
        """
        self._check()
        lighting = lighting if lighting is not None else Lighting()
        target = self._target(framing.width, framing.height)
        # The rest frame first: drawing it uploads rest data, the pose's comes after.
        scene = self._rest_scene(target, framing, lighting) if self.partial_redraw else None
        morphed, bones, gpu, positions = self._prepare_pose(pose, skin=False)
        if bones is None:
            # The padding of _skinned_z_range (whose boxes are all the rest box
            # here): the same depth range, so the same pixels as skinning.
            z_range = self._padded(*self._z_bounds(positions), 0.25, 1.0)
            source = "morphed"
        else:
            z_range = self._skinned_z_range(positions, bones)
            source = "gpu"
        z_range = self._depth_range_for(z_range)
        if scene is not None and z_range == self.depth_range:
            image = self._redraw(scene, target, framing, lighting, source, morphed, bones, gpu, positions)
            if image is not None:
                return image
        self._set_frame(target, framing, lighting, z_range)
        self._draw_materials(source, morphed.materials, morphed.tint_mul, morphed.tint_add)
        return self._resolve_and_read(target)

    def _depth_range_for(self, needed: tuple[float, float]) -> tuple[float, float]:
        """:attr:`depth_range` when it encloses ``needed`` (the range a pose
        needs), else ``needed``: a pure function of the pose, so the same pose
        always gets the same depth values."""
        lo, hi = self.depth_range
        return self.depth_range if lo <= needed[0] and needed[1] <= hi else needed

    def _rest_scene(self, target: _Target, framing: Framing, lighting: Lighting) -> _RestScene:
        """The kept rest-pose frame for this output size, framing and lighting
        (drawn in full on first use, with :attr:`depth_range`)."""
        key = (target.size, framing, lighting.ambient_rgb, lighting.directional_rgb, lighting.unit_direction)
        scene = self._scenes.get(key)
        if scene is not None:
            self._scenes.move_to_end(key)
            return scene
        morphed, _, _, positions = self._prepare_pose(None, skin=False)
        self._set_frame(target, framing, lighting, self.depth_range)
        self._draw_materials("morphed", morphed.materials, morphed.tint_mul, morphed.tint_add)
        image = self._resolve_and_read(target)
        image.setflags(write=False)
        scene = _RestScene(image, face_boxes(framing.to_pixels(positions), self.faces))
        self._scenes[key] = scene
        while len(self._scenes) > _SCENES_KEPT:
            self._scenes.popitem(last=False)
        return scene

    def _dirty_vertices(self, morphed, bones, gpu, positions: np.ndarray) -> np.ndarray:
        """(N,) bool: vertices whose drawn position, normal or UV may differ
        from the rest pose (see :mod:`mmdsynth.render.redraw`)."""
        dirty = changed_rows(positions, self._rest_positions)
        dirty |= changed_rows(np.ascontiguousarray(morphed.uvs, np.float32), self._rest_uvs)
        if bones is not None and bool(np.any(bones.moved)):
            for bones_of, uses in gpu["influences"]:  # one (N,) pair per influence slot
                dirty |= bones.moved.take(bones_of) & uses
        return dirty

    def _redraw(self, scene: _RestScene, target: _Target, framing: Framing, lighting: Lighting, source: str,
                morphed, bones, gpu, positions: np.ndarray) -> np.ndarray | None:
        """Repaint, over ``scene``'s rest image, the rectangle the pose can
        change (:mod:`mmdsynth.render.redraw`); the pose's data are uploaded.
        Returns the image, or None when a full redraw is needed instead: the
        rectangle is too large to gain time, or a skinned position is not
        finite."""
        motion = bones.moved.tobytes() if bones is not None and bool(np.any(bones.moved)) else None
        if motion is not None and motion in scene.too_large:
            return None
        faces = self.faces
        dirty = self._dirty_vertices(morphed, bones, gpu, positions)
        dirty_faces = any_column(dirty.take(faces)) if len(faces) else np.zeros(0, bool)
        touched = morphed.materials_touched
        if touched is not None and bool(np.any(touched)):
            dirty_faces |= (self.face_material >= 0) & touched[np.maximum(self.face_material, 0)]
        if not dirty_faces.any():
            return scene.image.copy()
        used = np.zeros(self.n_vertices, bool)
        used[faces[dirty_faces].ravel()] = True
        used = np.flatnonzero(used)
        if bones is None:
            now = positions[used]
        else:  # where the skinning pass put them (it already ran for this pose)
            now = np.frombuffer(gpu["skinned"].read(), np.float32).reshape(-1, 6)[used, :3]
        boxes = scene.face_boxes[dirty_faces]
        try:
            rect = dirty_rect([points_box(boxes[:, :2]), points_box(boxes[:, 2:]), points_box(framing.to_pixels(now))],
                              framing.width, framing.height)
        except ValueError:
            return None
        if rect is None:  # everything that changed is outside the picture
            return scene.image.copy()
        x0, y0, x1, y1 = rect
        if (x1 - x0) * (y1 - y0) > _PARTIAL_MAX_AREA * framing.width * framing.height:
            if motion is not None:
                scene.too_large.add(motion)
            return None
        drawn = np.flatnonzero((dirty_faces | faces_meeting(scene.face_boxes, rect)) & (self.face_material >= 0))
        counts = np.bincount(self.face_material[drawn], minlength=len(self.ranges)).tolist()
        self.ibo.write(np.ascontiguousarray(faces[drawn]), offset=self.n_faces * 12)
        ranges, first = [], self.n_faces
        for c in counts:
            ranges.append((first, c))
            first += c
        ss, height = self.supersample, framing.height
        # Output rows y0..y1 (from the top) are the render target's rows from
        # (height - y1) * ss up (GL counts rows from the bottom).
        self._set_frame(target, framing, lighting, self.depth_range,
                        scissor=(x0 * ss, (height - y1) * ss, (x1 - x0) * ss, (y1 - y0) * ss))
        self._draw_materials(source, morphed.materials, morphed.tint_mul, morphed.tint_add, ranges)
        image = scene.image.copy()
        image[y0:y1, x0:x1] = self._resolve_and_read(target, rect)
        return image

    def _z_bounds(self, positions: np.ndarray) -> tuple[float, float]:
        """(min, max) Z of ``positions`` (N,3) (-1, 1 for an empty model)."""
        if not self.n_vertices:
            return (-1.0, 1.0)
        lo, hi = _bounds(positions)
        return float(lo[2]), float(hi[2])

    def _skinned_z_range(self, positions: np.ndarray, bones) -> tuple[float, float]:
        """A depth range that encloses the GPU-skinned mesh: the morphed rest
        bounding box's corners moved by every bone's skinning transform (a
        linear blend stays inside the convex hull of these boxes), padded by a
        quarter of the extent plus 1 unit for SDEF/QDEF."""
        if not self.n_vertices:
            return (-1.0, 1.0)
        lo, hi = _bounds(positions)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        zs = [corners[:, 2]]
        if len(self.model.bones):
            rot = bones.rotation_matrices  # (B,3,3)
            zs.append((np.einsum("bj,cj->bc", rot[:, 2, :], corners) + bones.skin_translations[:, 2:3]).ravel())
        z = np.concatenate(zs)
        return self._padded(float(z.min()), float(z.max()), 0.25, 1.0)

    def skin_on_gpu(self, pose: Pose | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The GPU-skinned positions and normals of ``pose`` (what
        :meth:`render_pose` draws), read back for comparison with
        :func:`~mmdsynth.mmd.posing.pose_model`.

        Returns (positions, normals), (N,3) float32 each, MMD space, MMD units.
        Raises like :meth:`render_pose`.
        """
        self._check()
        _, _, gpu, _ = self._prepare_pose(pose)
        n = self.n_vertices
        data = np.frombuffer(gpu["skinned"].read(size=n * 24), np.float32).reshape(n, 6)
        return data[:, :3].copy(), data[:, 3:].copy()

    def render_bare(self, framing: Framing) -> np.ndarray:
        """The benchmark's baseline: one flat-shaded (constant colour), untextured
        draw of all faces of the REST positions (already on the GPU) into the
        same render target (same size, supersampling and MSAA) with depth test,
        no culling and no blending, then the same resolve pass and read-back.
        Returns the image like :meth:`render` (the rest silhouette in grey)."""
        self._check()
        ctx = self.ctx
        target = self._target(framing.width, framing.height)
        lo, hi = self.rest_bounds
        z_min, z_max = self._padded(lo[2], hi[2], 0.01, 1e-3)
        self.flat_prog["u_mvp"].write(np.ascontiguousarray(framing.mvp(z_min, z_max).T, np.float32).tobytes())
        target.fbo.scissor = None
        target.fbo.use()
        ctx.viewport = (0, 0, target.fbo.width, target.fbo.height)
        target.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        ctx.enable(moderngl.DEPTH_TEST)
        ctx.disable(moderngl.BLEND | moderngl.CULL_FACE)
        ctx.depth_func = "<"
        self.flat_vao.render(moderngl.TRIANGLES, vertices=3 * self.n_faces)
        return self._resolve_and_read(target)

    # ------------------------------------------------------------------ lifetime

    def release(self) -> None:
        """Free this renderer's GL objects (idempotent); later calls raise RenderError."""
        if self._released:
            return
        self._released = True
        for target in self._targets.values():
            for obj in target.objects:
                obj.release()
        self._targets.clear()
        for obj in reversed(self._objects):
            try:
                obj.release()
            except Exception:  # noqa: BLE001 - best effort
                pass
        self._objects.clear()
        self._gpu = None

    def __enter__(self) -> ModelRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

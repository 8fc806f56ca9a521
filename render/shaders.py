"""GLSL sources of the renderer (OpenGL 3.3 core).

* ``MODEL_VS`` / :func:`model_fs`: the Phong material pass on posed vertices
  (the formula is in :mod:`mmdsynth.render.renderer`'s docstring; ``MODEL_FS``
  implements it).
* ``SKIN_GLSL`` / :func:`skin_vs`: the skinning pass (transform feedback, once
  per vertex and frame) that reproduces :class:`mmdsynth.mmd.skinning.Skinner`
  (BDEF1/2/4 linear blend, SDEF, QDEF) from a bone texture; the formulas and
  their sources are in that module's docstring.
* ``FLAT_VS`` / ``FLAT_FS``: the bare raster pass (constant colour, no textures,
  no lighting) used as the benchmark's baseline.
* :func:`resolve_fs`: the final pass that box-filters the premultiplied render
  target down to the output size, converts to straight alpha, zeroes
  uncovered pixels and flips rows so that a plain read-back has row 0 at the top.
"""

from __future__ import annotations

# Bone texture (RGBA32F, 5 texels per bone, one row per bone):
#   texels 0..2: rows 0..2 of the skinning transform [R | s] (p' = R p + s);
#   texel 3: the bone's global rotation quaternion (x, y, z, w) (= rotation of R);
#   texel 4: x = 1 when the skinning transform is not exactly the identity
#   (BonePose.moved), else 0.
# As in mmd.skinning.Skinner, a vertex that no moved bone influences keeps its
# position and normal bit for bit (the partial redraw relies on it).
# Per-vertex skinning data (see render.renderer._skin_attributes):
#   in_kind 0: linear blend, in_bones/in_weights: up to 4 influences (weight 0 = unused);
#   in_kind 1: SDEF, bones in_bones.xy, w0 = in_weights.x, C / CR0 / CR1 in in_sdef_*;
#   in_kind 2: QDEF, up to 4 influences.
SKIN_GLSL = """
uniform sampler2D u_bones;
in ivec4 in_bones;
in vec4 in_weights;
in int in_kind;
in vec3 in_sdef_c;
in vec3 in_sdef_cr0;
in vec3 in_sdef_cr1;

mat3 bone_rot_minus_i(int b) {      // R - I (exactly zero for a bone that did not move)
    vec4 r0 = texelFetch(u_bones, ivec2(0, b), 0);
    vec4 r1 = texelFetch(u_bones, ivec2(1, b), 0);
    vec4 r2 = texelFetch(u_bones, ivec2(2, b), 0);
    // GLSL matrices are column-major: columns of (R - I).
    return mat3(r0.x - 1.0, r1.x, r2.x,
                r0.y, r1.y - 1.0, r2.y,
                r0.z, r1.z, r2.z - 1.0);
}
vec3 bone_trans(int b) {
    return vec3(texelFetch(u_bones, ivec2(0, b), 0).w,
                texelFetch(u_bones, ivec2(1, b), 0).w,
                texelFetch(u_bones, ivec2(2, b), 0).w);
}
vec4 bone_quat(int b) { return texelFetch(u_bones, ivec2(3, b), 0); }
bool bone_moved(int b) { return texelFetch(u_bones, ivec2(4, b), 0).x != 0.0; }

vec4 qmul(vec4 a, vec4 b) {         // Hamilton product, (x, y, z, w)
    return vec4(a.w * b.xyz + b.w * a.xyz + cross(a.xyz, b.xyz), a.w * b.w - dot(a.xyz, b.xyz));
}
vec3 qrot(vec4 q, vec3 v) {         // q v q*
    vec3 t = 2.0 * cross(q.xyz, v);
    return v + q.w * t + cross(q.xyz, t);
}
mat3 qmat_minus_i(vec4 q) {         // R(q) - I, column-major
    float xx = q.x * q.x, yy = q.y * q.y, zz = q.z * q.z;
    float xy = q.x * q.y, xz = q.x * q.z, yz = q.y * q.z;
    float wx = q.w * q.x, wy = q.w * q.y, wz = q.w * q.z;
    return mat3(-2.0 * (yy + zz), 2.0 * (xy + wz), 2.0 * (xz - wy),
                2.0 * (xy - wz), -2.0 * (xx + zz), 2.0 * (yz + wx),
                2.0 * (xz + wy), 2.0 * (yz - wx), -2.0 * (xx + yy));
}
vec4 qslerp(vec4 a, vec4 b, float t) {   // as mmd.quaternion.quat_slerp (glm / Babylon.js)
    float c = dot(a, b);
    float sgn = c < 0.0 ? -1.0 : 1.0;
    c = abs(c);
    float k0, k1;
    if (c > 1.0 - 1e-6) {
        k0 = 1.0 - t; k1 = t;
    } else {
        float th = acos(clamp(c, -1.0, 1.0));
        float s = sin(th);
        k0 = sin((1.0 - t) * th) / s; k1 = sin(t * th) / s;
    }
    vec4 q = k0 * a + (k1 * sgn) * b;
    return q / length(q);
}
vec3 safe_normalize(vec3 v) { float l = length(v); return l > 0.0 ? v / l : v; }

void skin(inout vec3 p, inout vec3 n) {
#if HAS_SDEF
    if (in_kind == 1) {
        int b0 = in_bones.x, b1 = in_bones.y;
        if (!bone_moved(b0) && !bone_moved(b1)) return;
        float w0 = in_weights.x, w1 = 1.0 - w0;
        mat3 rs = qmat_minus_i(qslerp(bone_quat(b0), bone_quat(b1), w1));
        vec3 dp = rs * (p - in_sdef_c)
                + w0 * (bone_rot_minus_i(b0) * in_sdef_cr0 + bone_trans(b0))
                + w1 * (bone_rot_minus_i(b1) * in_sdef_cr1 + bone_trans(b1));
        p += dp;
        n = safe_normalize(n + rs * n);
        return;
    }
#endif
#if HAS_QDEF
    if (in_kind == 2) {
        bool any_moved = false;
        for (int i = 0; i < 4; i++) {
            if (in_weights[i] != 0.0 && bone_moved(max(in_bones[i], 0))) any_moved = true;
        }
        if (!any_moved) return;
        vec4 real0 = bone_quat(max(in_bones.x, 0));
        vec4 br = vec4(0.0), bd = vec4(0.0);
        for (int i = 0; i < 4; i++) {
            float w = in_weights[i];
            if (w == 0.0) continue;
            int b = max(in_bones[i], 0);
            vec4 real = bone_quat(b);
            vec4 dual = 0.5 * qmul(vec4(bone_trans(b), 0.0), real);
            if (dot(real, real0) < 0.0) w = -w;
            br += w * real;
            bd += w * dual;
        }
        float len = length(br);
        if (len > 0.0) { br /= len; bd /= len; } else { br = vec4(0.0, 0.0, 0.0, 1.0); }
        vec3 t = 2.0 * qmul(bd, vec4(-br.xyz, br.w)).xyz;
        p = qrot(br, p) + t;
        n = safe_normalize(qrot(br, n));
        return;
    }
#endif
    {
        vec3 dp = vec3(0.0), dn = vec3(0.0);
        for (int i = 0; i < 4; i++) {
            float w = in_weights[i];
            if (w == 0.0) continue;
            int b = in_bones[i];
            mat3 a = bone_rot_minus_i(b);
            dp += w * (a * p + bone_trans(b));
            dn += w * (a * n);
        }
        p += dp;
        // dn is exactly zero when no influencing bone rotated: keep the normal as is
        if (dn != vec3(0.0)) n = safe_normalize(n + dn);
    }
}
"""


MODEL_VS = """
#version 330
uniform mat4 u_view;   // MMD space -> view space (framing.MMD_TO_VIEW: flip z)
uniform mat4 u_proj;   // view space -> clip space (orthographic)
in vec3 in_position;   // posed, MMD space, MMD units
in vec3 in_normal;     // posed, MMD space
in vec2 in_uv;         // texture coordinates, v down (row 0 of the image at v = 0)
out vec3 v_normal;     // view space
out vec2 v_uv;
void main() {
    v_normal = mat3(u_view) * in_normal;
    v_uv = in_uv;
    gl_Position = u_proj * (u_view * vec4(in_position, 1.0));
}
"""


SKIN_FEEDBACK_VS = """
in vec3 in_position;
in vec3 in_normal;
out vec3 tf_position;
out vec3 tf_normal;
void main() {
    vec3 p = in_position;
    vec3 n = in_normal;
    skin(p, n);
    tf_position = p;
    tf_normal = n;
}
"""


def skin_vs(has_sdef: bool, has_qdef: bool) -> str:
    """The skinning pass (transform feedback into ``tf_position``, ``tf_normal``,
    MMD space): :data:`SKIN_GLSL` compiled with only the deform types the
    model uses (the SDEF and QDEF code costs even where unused on llvmpipe)."""
    return (f"#version 330\n#define HAS_SDEF {int(bool(has_sdef))}\n#define HAS_QDEF {int(bool(has_qdef))}\n"
            + SKIN_GLSL + SKIN_FEEDBACK_VS)


MODEL_FS = """
#version 330
// Feature switches (set by model_fs; a material uses the variant it needs, so the
// common opaque, untinted, non-specular case runs the shortest code; on a CPU
// rasteriser every instruction counts).
#ifndef HAS_TEXTURE
#define HAS_TEXTURE 1      // sample u_texture (else white)
#endif
#ifndef TEXTURE_ALPHA
#define TEXTURE_ALPHA 1    // the texture has alpha < 1 somewhere: un-premultiply, alpha test
#endif
#ifndef TINT
#define TINT 1             // material-morph texture/sphere tints are not the identity
#endif
#ifndef SPECULAR
#define SPECULAR 1         // the material's specular colour is not black
#endif
#ifndef SPHERE
#define SPHERE 0           // 0 off, 1 multiply (.sph), 2 add (.spa)
#endif
#ifndef DOUBLE_SIDED
#define DOUBLE_SIDED 1     // flip the normal on back faces
#endif
uniform sampler2D u_texture;      // premultiplied RGBA, mipmapped
uniform sampler2D u_sphere;       // premultiplied RGBA
uniform vec4 u_tex_mul;           // material-morph texture tint: factor (identity 1)
uniform vec4 u_tex_add;           //   and term (identity 0)
uniform vec4 u_sph_mul;           // material-morph sphere tint
uniform vec4 u_sph_add;
uniform vec4 u_diffuse;           // material diffuse RGBA
uniform vec3 u_specular;          // material specular RGB
uniform float u_power;            // material specular power
uniform vec3 u_ambient_light;     // ambient light colour (magnitude x white)
uniform vec3 u_light_color;       // directional light colour (magnitude x white)
uniform vec3 u_light_dir;         // direction the light travels, view space, unit
in vec3 v_normal;
in vec2 v_uv;
out vec4 frag;

vec4 straight(vec4 t) {           // premultiplied texel -> straight RGBA
    return vec4(t.a > 0.0 ? t.rgb / t.a : vec3(0.0), t.a);
}
vec3 tint(vec3 c, vec4 mul, vec4 add) {   // PosedMesh.material_tint_* (babylon-mmd's MMD shader)
    c = mix(vec3(1.0), c * mul.rgb, mul.a);
    return clamp(c + (c - vec3(1.0)) * add.a, 0.0, 1.0) + add.rgb;
}

void main() {
#if HAS_TEXTURE
#if TEXTURE_ALPHA
    vec4 tex = straight(texture(u_texture, v_uv));
#else
    vec4 tex = vec4(texture(u_texture, v_uv).rgb, 1.0);
#endif
#if TINT
    tex.rgb = tint(tex.rgb, u_tex_mul, u_tex_add);
#endif
#else
    vec4 tex = vec4(1.0);
#endif
    float alpha = u_diffuse.a * tex.a;
#if HAS_TEXTURE && TEXTURE_ALPHA
    if (alpha < 1.0 / 255.0) discard;              // no colour, no depth write
#endif
    vec3 n = normalize(v_normal);
#if DOUBLE_SIDED
    if (!gl_FrontFacing) n = -n;                   // back faces of double-sided materials
#endif
    vec3 base = tex.rgb;
#if SPHERE != 0
    vec3 s = straight(texture(u_sphere, vec2(0.5 + 0.5 * n.x, 0.5 - 0.5 * n.y))).rgb;
#if TINT
    s = tint(s, u_sph_mul, u_sph_add);
#endif
#if SPHERE == 1
    base *= s;
#else
    base += s;
#endif
#endif
    float ndl = max(-dot(n, u_light_dir), 0.0);   // N.L, L = -u_light_dir points to the light
    vec3 color = base * u_diffuse.rgb * (u_ambient_light + u_light_color * ndl);
#if SPECULAR
    vec3 r = reflect(u_light_dir, n);              // mirror direction of the incoming light
    float rdv = max(r.z, 0.0);                     // R.V with V = (0,0,1): orthographic viewer
    float spec = (ndl > 0.0) ? pow(rdv, max(u_power, 1e-4)) : 0.0;
    color += u_specular * u_light_color * spec;
#endif
    frag = vec4(clamp(color, 0.0, 1.0), alpha);
}
"""


def model_fs(has_texture: bool = True, texture_alpha: bool = True, tint: bool = True, specular: bool = True,
             sphere: int = 0, double_sided: bool = True) -> str:
    """Fragment shader of the material pass with only the features a material
    needs (see the switches at the top of ``MODEL_FS``). Every variant computes
    the same formula; leaving a feature out is exact when its input is the
    identity (no texture alpha: alpha 1 and no division; no tint; black
    specular; single-sided: no back faces reach the shader)."""
    defines = {"HAS_TEXTURE": has_texture, "TEXTURE_ALPHA": texture_alpha, "TINT": tint,
               "SPECULAR": specular, "SPHERE": int(sphere), "DOUBLE_SIDED": double_sided}
    head = "".join(f"#define {k} {int(v)}\n" for k, v in defines.items())
    return MODEL_FS.replace("#version 330\n", "#version 330\n" + head, 1)


FLAT_VS = """
#version 330
uniform mat4 u_mvp;    // MMD space -> clip space
in vec3 in_position;
void main() {
    gl_Position = u_mvp * vec4(in_position, 1.0);
}
"""

FLAT_FS = """
#version 330
out vec4 frag;
void main() {
    frag = vec4(0.8, 0.8, 0.8, 1.0);
}
"""

FULLSCREEN_VS = """
#version 330
void main() {
    // One triangle covering the viewport: (-1,-1), (3,-1), (-1,3).
    vec2 p = vec2((gl_VertexID == 1) ? 3.0 : -1.0, (gl_VertexID == 2) ? 3.0 : -1.0);
    gl_Position = vec4(p, 0.0, 1.0);
}
"""


def resolve_fs(factor: int, samples: int) -> str:
    """Fragment shader of the resolve pass for a ``factor``-times supersampled
    target with ``samples`` MSAA samples per texel (1: a plain texture).

    Output pixel (x, r) (r counted from the top) = the mean of the premultiplied
    source texels in columns x*factor .. x*factor+factor-1 and in the matching
    ``factor`` rows counted from the top, over all samples (a box filter); then
    alpha is rounded to 8 bits and, where it rounds to 0, the pixel is exactly
    (0,0,0,0); elsewhere rgb = mean(rgb) / mean(alpha) (straight alpha).
    Raises ValueError for factor or samples < 1.
    """
    factor, samples = int(factor), int(samples)
    if factor < 1 or samples < 1:
        raise ValueError(f"resolve_fs: factor {factor} and samples {samples} must be >= 1")
    if samples > 1:
        decl = "uniform sampler2DMS u_src;"
        fetch = "texelFetch(u_src, p, s)"
    else:
        decl = "uniform sampler2D u_src;"
        fetch = "texelFetch(u_src, p, 0)"
    return f"""
#version 330
#define FACTOR {factor}
#define SAMPLES {samples}
{decl}
uniform int u_out_height;
out vec4 frag;
void main() {{
    ivec2 o = ivec2(gl_FragCoord.xy);
    int src_row0 = (u_out_height - 1 - o.y) * FACTOR;   // flip: output row 0 = image top
    vec4 acc = vec4(0.0);
    for (int dy = 0; dy < FACTOR; dy++) {{
        for (int dx = 0; dx < FACTOR; dx++) {{
            ivec2 p = ivec2(o.x * FACTOR + dx, src_row0 + dy);
            for (int s = 0; s < SAMPLES; s++) {{
                acc += {fetch};
            }}
        }}
    }}
    acc /= float(FACTOR * FACTOR * SAMPLES);
    float a8 = floor(acc.a * 255.0 + 0.5);
    if (a8 < 0.5) {{
        frag = vec4(0.0);
    }} else {{
        frag = vec4(clamp(acc.rgb / acc.a, 0.0, 1.0), a8 / 255.0);
    }}
}}
"""

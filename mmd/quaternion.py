"""Quaternion helpers for posing (numpy only, vectorised over leading axes).

Conventions (shared by :mod:`.skeleton`, :mod:`.skinning` and :mod:`.posing`):

* A quaternion is stored as ``(x, y, z, w)`` (the PMX/VMD order), float64
  unless a function says otherwise.
* Products are Hamilton products and rotations act as ``v' = q v q*``, so the
  rotation matrix is the standard one (column vectors): ``R(a * b) = R(a) R(b)``,
  i.e. ``a * b`` applies ``b`` first. These formulas are used unchanged on MMD's
  left-handed coordinates, which is what MMD itself (Direct3D's
  ``D3DXMatrixRotationQuaternion`` with row vectors, the transpose of the same
  matrix) does: a positive angle about +Z carries +X toward +Y.
* Angles are in radians.

Slerp follows glm's ``glm::slerp`` / Babylon.js' ``Quaternion.SlerpToRef`` (the
two references saba and babylon-mmd rely on): shortest arc (the second
quaternion is negated when the dot product is negative), linear interpolation
when the two are closer than ``1 - 1e-6`` in cosine, and ``t`` outside [0, 1]
extrapolates (MMD's negative append ratios rely on it). Unlike those, the
result of the near-parallel branch is renormalised, which makes
``slerp(identity, identity, t)`` exactly the identity.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "IDENTITY",
    "quat_multiply",
    "quat_conjugate",
    "quat_normalize",
    "quat_to_matrix",
    "matrix_to_quat",
    "quat_rotate",
    "quat_slerp",
    "quat_from_axis_angle",
    "quat_angle",
]

IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])
"""The identity rotation ``(0, 0, 0, 1)``, float64."""

_LINEAR_COS = 1.0 - 1e-6  # glm's epsilon / Babylon's 0.999999


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a * b`` of quaternions (..., 4) (x, y, z, w); broadcasts.

    ``R(a * b) = R(a) @ R(b)``: the result applies ``b`` first, then ``a``.
    Returns float64 (..., 4). A product with the exact identity returns the
    other operand bit for bit.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    ax, ay, az, aw = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bx, by, bz, bw = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ],
        axis=-1,
    )


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    """Conjugate (the inverse of a unit quaternion), (..., 4) float64."""
    q = np.array(q, np.float64)
    q[..., :3] *= -1.0
    return q


def quat_normalize(q: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) float64.

    Raises ValueError when a quaternion has zero length or is not finite.
    A quaternion that is already exactly unit (such as the identity) is
    returned unchanged.
    """
    q = np.asarray(q, np.float64)
    n = np.sqrt(np.sum(q * q, axis=-1, keepdims=True))
    if not np.all(np.isfinite(n)) or np.any(n == 0.0):
        raise ValueError("quaternion must be finite and non-zero")
    return q / n


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) float64 of unit quaternions (..., 4) (x, y, z, w).

    Column-vector convention (``v' = R @ v``), the standard formula; the exact
    identity quaternion gives the exact identity matrix.
    """
    q = np.asarray(q, np.float64)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    m = np.empty(q.shape[:-1] + (3, 3))
    m[..., 0, 0] = 1.0 - 2.0 * (yy + zz)
    m[..., 0, 1] = 2.0 * (xy - wz)
    m[..., 0, 2] = 2.0 * (xz + wy)
    m[..., 1, 0] = 2.0 * (xy + wz)
    m[..., 1, 1] = 1.0 - 2.0 * (xx + zz)
    m[..., 1, 2] = 2.0 * (yz - wx)
    m[..., 2, 0] = 2.0 * (xz - wy)
    m[..., 2, 1] = 2.0 * (yz + wx)
    m[..., 2, 2] = 1.0 - 2.0 * (xx + yy)
    return m


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) (x, y, z, w), w >= 0, of rotation matrices (..., 3, 3).

    Shepperd's method (the largest of w, x, y, z is found first), as glm's
    ``quat_cast``. Float64.
    """
    m = np.asarray(m, np.float64)
    shape = m.shape[:-2]
    m = m.reshape(-1, 3, 3)
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cand = np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1)
    k = np.argmax(cand, axis=1)
    q = np.empty((len(m), 4))
    for case in range(4):
        sel = k == case
        if not np.any(sel):
            continue
        a = m[sel]
        if case == 0:
            s = np.sqrt(tr[sel] + 1.0) * 2.0
            q[sel] = np.stack([(a[:, 2, 1] - a[:, 1, 2]) / s, (a[:, 0, 2] - a[:, 2, 0]) / s,
                               (a[:, 1, 0] - a[:, 0, 1]) / s, 0.25 * s], axis=1)
        elif case == 1:
            s = np.sqrt(1.0 + a[:, 0, 0] - a[:, 1, 1] - a[:, 2, 2]) * 2.0
            q[sel] = np.stack([0.25 * s, (a[:, 0, 1] + a[:, 1, 0]) / s,
                               (a[:, 0, 2] + a[:, 2, 0]) / s, (a[:, 2, 1] - a[:, 1, 2]) / s], axis=1)
        elif case == 2:
            s = np.sqrt(1.0 + a[:, 1, 1] - a[:, 0, 0] - a[:, 2, 2]) * 2.0
            q[sel] = np.stack([(a[:, 0, 1] + a[:, 1, 0]) / s, 0.25 * s,
                               (a[:, 1, 2] + a[:, 2, 1]) / s, (a[:, 0, 2] - a[:, 2, 0]) / s], axis=1)
        else:
            s = np.sqrt(1.0 + a[:, 2, 2] - a[:, 0, 0] - a[:, 1, 1]) * 2.0
            q[sel] = np.stack([(a[:, 0, 2] + a[:, 2, 0]) / s, (a[:, 1, 2] + a[:, 2, 1]) / s,
                               0.25 * s, (a[:, 1, 0] - a[:, 0, 1]) / s], axis=1)
    q = np.where(q[:, 3:4] < 0.0, -q, q)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.reshape(shape + (4,))


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors (..., 3) by unit quaternions (..., 4): ``q v q*``. Float64, broadcasts."""
    q = np.asarray(q, np.float64)
    v = np.asarray(v, np.float64)
    u = q[..., :3]
    w = q[..., 3:4]
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def quat_slerp(a: np.ndarray, b: np.ndarray, t) -> np.ndarray:
    """Spherical linear interpolation from ``a`` (t = 0) to ``b`` (t = 1).

    ``a``, ``b``: unit quaternions (..., 4); ``t``: scalar or array broadcasting
    against ``a[..., 0]`` (any real, negative or > 1 extrapolates). Shortest arc
    and near-parallel linear branch as glm/Babylon.js (see the module
    docstring). Returns unit quaternions (..., 4) float64.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    t = np.asarray(t, np.float64)
    a, b = np.broadcast_arrays(a, b)
    cos = np.sum(a * b, axis=-1)
    sign = np.where(cos < 0.0, -1.0, 1.0)
    cos = np.abs(cos)
    linear = cos > _LINEAR_COS
    theta = np.arccos(np.clip(cos, -1.0, 1.0))
    sin = np.sin(theta)
    safe = np.where(linear, 1.0, sin)
    k0 = np.where(linear, 1.0 - t, np.sin((1.0 - t) * theta) / safe)
    k1 = np.where(linear, t, np.sin(t * theta) / safe) * sign
    out = k0[..., None] * a + k1[..., None] * b
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


def quat_from_axis_angle(axis, angle) -> np.ndarray:
    """Unit quaternion(s) (..., 4) (x, y, z, w) rotating by ``angle`` radians about ``axis``.

    ``axis`` (..., 3) need not be unit length (it is normalised); raises
    ValueError for a zero axis. Positive angles follow the right-hand rule
    applied to MMD's coordinates (about +Z, +X turns toward +Y).
    """
    axis = np.asarray(axis, np.float64)
    n = np.linalg.norm(axis, axis=-1, keepdims=True)
    if np.any(n == 0.0):
        raise ValueError("rotation axis must be non-zero")
    half = 0.5 * np.asarray(angle, np.float64)[..., None]
    return np.concatenate([axis / n * np.sin(half), np.cos(half)], axis=-1)


def quat_angle(q: np.ndarray) -> np.ndarray:
    """Rotation angle in radians, in [0, pi], of unit quaternions (..., 4)."""
    q = np.asarray(q, np.float64)
    return 2.0 * np.arctan2(np.linalg.norm(q[..., :3], axis=-1), np.abs(q[..., 3]))

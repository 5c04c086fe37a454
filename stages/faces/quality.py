"""Face quality evidence, measured once where the face is seen (the filter stage): sharpness and head pose.

Both work on any backend's five landmarks (LANDMARK_ORDER), so every backend's faces are measured alike.

Sharpness: the variance of the Laplacian (the 3x3 aperture) of the grey face region, a square of
REGION_SCALE x the eye-to-mouth distance around the face's centre, resized to SHARPNESS_SIDE px: the
size is fixed, so a large face does not score sharper for its size alone (shrunk by pixel area first,
as a plain warp would alias and add false detail). It is measured on the detection image (long side
`face.max_side`): a face box under ~230 px there (the region is ~0.7 of the box's side) is enlarged
and reads softer than it is. It rises with contrast, so a dim, flat-lit face scores lower than a bright one.

Head pose, closed form under weak perspective, after undoing the roll (degrees):
- roll: the angle of the eye line (> 0: clockwise in the image, the eye on the image's right lower);
- yaw: the nose tip's offset from the eyes-to-mouth midline over the half interocular distance r:
  tan(yaw) = r / NOSE_DEPTH (> 0: the face turned toward the image's right);
- pitch: the nose tip's height between the eye line and the mouth line t, against the ArcFace
  template's frontal t0: tan(pitch) = (t0 - t) * EYE_TO_MOUTH / NOSE_DEPTH (> 0: chin up).
Accuracy limits: NOSE_DEPTH is a generic adult face (the nose tip ~0.7 half interocular distances, about
22 mm, in front of the eyes and mouth corners); real noses differ by ~25%, which scales tan(yaw) and
tan(pitch) alike. Five-point detectors place landmarks within a few pixels: on the labelled photos
(YuNet) a photo and its mirror image disagree on yaw by up to 15 degrees (90% within 11), on pitch by
up to 17; YuNet's eyes lean toward upright, so a photo turned 15 degrees in the image plane reads a
roll change of 10 (median). Pitch's zero depends on each detector's nose convention: the median is
-18 degrees (YuNet) and -11 (dlib) on level-looking portraits, so pitch is the least reliable. Beyond
~60 degrees of yaw the far eye is hidden and its landmark a guess: the sign holds, the magnitude does not.
"""

from __future__ import annotations

import math

import numpy as np

SHARPNESS_SIDE = 160  # px: the face region's side when its sharpness is measured
REGION_SCALE = 2.0  # region side / eye-to-mouth distance: brows to chin, cheek to cheek
NOSE_DEPTH = 0.7  # nose tip ahead of the eyes and mouth corners, in half interocular distances (generic face)
# ArcFace's 112 px alignment template (LANDMARK_ORDER): the frontal proportions pose is measured against
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def _midpoints(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return points[:2].mean(axis=0), points[3:].mean(axis=0)


def _frontal() -> tuple[float, float]:
    """The template's nose height between eye line and mouth line (t0), and eye-to-mouth / half interocular."""
    eyes, mouth = _midpoints(TEMPLATE)
    height = mouth[1] - eyes[1]
    return (TEMPLATE[2, 1] - eyes[1]) / height, height / ((TEMPLATE[1, 0] - TEMPLATE[0, 0]) / 2)


FRONTAL_NOSE, EYE_TO_MOUTH = _frontal()


def head_pose(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from five landmarks in image pixels (see the module's notes)."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    dx, dy = points[1] - points[0]
    roll = math.atan2(dy, dx)
    cos, sin = math.cos(roll), math.sin(roll)
    upright = (points - points[:2].mean(axis=0)) @ np.array([[cos, -sin], [sin, cos]])  # eye line horizontal
    floor = 1e-6 * (math.hypot(dx, dy) + 1.0)  # degenerate points (a false detection) give +-90, not a division error
    half_eyes = max((upright[1, 0] - upright[0, 0]) / 2, floor)
    mouth = upright[3:].mean(axis=0)
    nose_height = upright[2, 1] / max(mouth[1], floor)
    offset = (upright[2, 0] - nose_height * mouth[0]) / half_eyes
    yaw = math.atan2(offset, NOSE_DEPTH)
    pitch = math.atan2((FRONTAL_NOSE - nose_height) * EYE_TO_MOUTH, NOSE_DEPTH)
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def sharpness(image: np.ndarray, landmarks: np.ndarray) -> float:
    """Variance of the Laplacian of the face region of an RGB image, at SHARPNESS_SIDE px (see the module's notes)."""
    import cv2  # here: a resume imports the filter stage without measuring anything

    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eyes, mouth = _midpoints(points)
    side = max(REGION_SCALE * float(np.linalg.norm(mouth - eyes)), 1.0)
    x0, y0 = (eyes + mouth) / 2 - side / 2
    height, width = image.shape[:2]
    left, top = min(max(int(x0), 0), width - 1), min(max(int(y0), 0), height - 1)
    right = min(max(math.ceil(x0 + side) + 1, left + 1), width)
    bottom = min(max(math.ceil(y0 + side) + 1, top + 1), height)
    window = cv2.cvtColor(np.ascontiguousarray(image[top:bottom, left:right]), cv2.COLOR_RGB2GRAY)
    scale = SHARPNESS_SIDE / side
    shrink = min(scale, 1.0)
    if shrink < 1.0:
        window = cv2.resize(window, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
    grow = scale / shrink
    warp = np.array([[grow, 0.0, (left - x0) * scale], [0.0, grow, (top - y0) * scale]])
    flags = cv2.INTER_LINEAR if shrink < 1.0 else cv2.INTER_CUBIC
    region = cv2.warpAffine(window, warp, (SHARPNESS_SIDE, SHARPNESS_SIDE), flags=flags, borderMode=cv2.BORDER_REFLECT)
    return float(cv2.Laplacian(region.astype(np.float64), cv2.CV_64F).var())

"""The defaults that the command line and the Python API share (one set; standard library only, so the CLI
can name them without importing numpy): chosen for what a user sees first."""

DEFAULT_INTERPOLATION = "slerp"  # keeps the path's norms typical of the prior; lerp dips through the centre
DEFAULT_INTERPOLATION_STEPS = 8
DEFAULT_TRAVERSE_UNITS = "top5"  # the five units with the most KL: the ones that move the image
DEFAULT_TRAVERSE_RANGE = 3.0  # offsets up to 3 prior standard deviations
DEFAULT_TRAVERSE_STEPS = 7
MAX_TILT_DEG = 40.0  # a slice normal farther than this from the head-foot axis is not axial (gantry tilt: <= ~30°)

WINDOWS: dict[str, tuple[float, float]] = {  # display windows (center, width) in HU, by name
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "bone": (600.0, 2800.0),
}

BRAIN_WINDOW = WINDOWS["brain"]  # the default display window, and the window of the brain-window MAE
BODY_THRESHOLD_HU = -500.0  # above: body (head, and table, holder, anything solid in the field): head masks, centring
AIR_HU = -1000.0  # air: what padding pixels and the area outside the scanned field of view become
ACTIVE_UNIT_KL = 0.01  # nats: a latent unit whose mean KL exceeds this carries information ("active")

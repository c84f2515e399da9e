"""The exact class strings of DESIGN.md; models, SQL and evaluation all depend on them."""

BODY_PART = (
    "head",
    "neck",
    "chest",
    "abdomen",
    "pelvis",
    "spine",
    "upper_limb",
    "lower_limb",
    "other",
)
PROJECTION = ("PA", "AP", "LATERAL")
ORIENTATION = ("upright", "rot90cw", "rot180", "rot90ccw")

TASKS = {"body_part": BODY_PART, "projection": PROJECTION, "orientation": ORIENTATION}

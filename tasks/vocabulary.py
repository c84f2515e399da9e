"""The exact class strings of docs/architecture.md (Vocabularies); models, SQL and evaluation all depend on them."""

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
# The quarter turns the self-supervised orientation probe applies to sampled images.
TURNS = ORIENTATION[1:]

TASKS = {"body_part": BODY_PART, "projection": PROJECTION, "orientation": ORIENTATION}

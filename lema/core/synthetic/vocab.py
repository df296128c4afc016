"""Word lists for the story families: short, common words keep questions short in tokens."""

from __future__ import annotations

# (name, gender): gender picks the pronouns.
NAMES: list[tuple[str, str]] = [
    ("Mia", "f"), ("Ana", "f"), ("Eva", "f"), ("Zoe", "f"), ("Ivy", "f"), ("Lily", "f"), ("Emma", "f"),
    ("Nina", "f"), ("Lena", "f"), ("Sara", "f"), ("Yuki", "f"), ("Amara", "f"), ("Rosa", "f"), ("Kate", "f"),
    ("Tom", "m"), ("Ben", "m"), ("Leo", "m"), ("Sam", "m"), ("Max", "m"), ("Omar", "m"), ("Noah", "m"),
    ("Jack", "m"), ("Ravi", "m"), ("Carlos", "m"), ("Ali", "m"), ("Finn", "m"), ("Hugo", "m"), ("Ken", "m"),
]

# Shopping: things bought by the dozen (plural) and single things.
SHOP_ITEMS = ["pens", "books", "apples", "cups", "toys", "shirts", "plates", "candles", "balls", "socks",
              "hats", "bowls", "pencils", "stamps"]
SHOP_THINGS = ["bag", "lamp", "game", "scarf", "clock", "map", "kite", "mug", "belt", "card"]

# Rates and time: (verb, made things).
JOBS = [("bakes", "cookies"), ("makes", "cards"), ("folds", "cranes"), ("paints", "tiles"),
        ("makes", "bracelets"), ("picks", "apples"), ("knits", "hats"), ("packs", "boxes"),
        ("builds", "chairs"), ("sews", "dolls")]

# Sharing and groups.
PLACES = ["camp", "park", "school trip", "club", "party", "game", "library", "museum"]
PEOPLE = ["kids", "students", "campers", "players", "scouts", "guests", "children"]
SHARED_THINGS = ["balls", "maps", "snacks", "ropes", "tents", "boards", "cards"]
TEAM_WORDS = ["teams", "groups", "buses", "tables", "rows"]

# Ages.
RELATIVES = ["brother", "sister", "cousin", "aunt", "uncle", "friend", "neighbor"]

# Money: who gives money, and things to spend it on.
GIVERS = ["grandma", "uncle", "aunt", "mom", "dad", "neighbor"]

# Unit conversion: (stuff, big unit plural, big unit singular, small unit, factor).
CONVERSIONS = [("ribbon", "feet", "foot", "inches", 12), ("rope", "yards", "yard", "feet", 3),
               ("juice", "gallons", "gallon", "quarts", 4), ("flour", "pounds", "pound", "ounces", 16),
               ("tape", "feet", "foot", "inches", 12), ("fabric", "yards", "yard", "feet", 3),
               ("milk", "gallons", "gallon", "quarts", 4), ("cheese", "pounds", "pound", "ounces", 16),
               ("vacation", "weeks", "week", "days", 7), ("wire", "meters", "meter", "decimeters", 10)]

# Garden (the out-of-distribution family: its words appear nowhere in training).
PLANTS = ["tomatoes", "carrots", "tulips", "peppers", "onions", "roses", "beans", "daisies"]
CONTAINERS = ["baskets", "pots", "crates", "vases"]
PESTS = ["Rabbits", "Birds", "Deer", "Snails"]

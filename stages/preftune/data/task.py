"""The built-in task: a grammar tutor that corrects one learner sentence.

Every sentence is built from parts, some of which are `Slot`s: a place where a learner can make a
mistake of one category. A prompt sentence has exactly one slot set to a learner error; its correct
form is known, so the gold checker (gold.py) needs nothing but that string. Other slots let a bad answer
"fix one error and introduce another".

Answers come in kinds:
  correct      the corrected sentence
  uncorrected  the learner's sentence handed back unchanged
  bad_fix      the error slot changed to another wrong form ("more big" -> "more bigger")
  new_error    the error fixed, a different slot broken
  rambling     the correct sentence buried in chatter (the checker wants the sentence alone)

The "noisy tutor" that writes the SFT demonstrations has one habit per category (the kind of
mistake it makes there) and a per-category rate of making it. Greedy decoding copies the most
common answer, so a category whose rate is above 0.5 is one the SFT model gets wrong, and one
where DPO has something to fix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

CATEGORIES = ("agreement", "past_tense", "article", "plural", "pronoun", "comparative")
ANSWER_KINDS = ("uncorrected", "bad_fix", "new_error", "rambling")
# The tutor's habitual mistake per category, used in SFT demonstrations and, most often, as the
# rejected answer of preference pairs (rejected answers that look like the SFT model's own mistakes
# are what make DPO effective).
HABITS = {
    "agreement": "bad_fix",
    "past_tense": "bad_fix",
    "article": "uncorrected",
    "plural": "bad_fix",
    "pronoun": "uncorrected",
    "comparative": "bad_fix",
}
PROMPT_TEMPLATE = "Fix the grammar: {sentence}\nAnswer:"


@dataclass(frozen=True)
class Slot:
    category: str
    correct: str
    errors: tuple[str, ...]  # what a learner writes here
    bad_fix: str  # what a careless tutor "corrects" it to

    def __post_init__(self):
        if not self.errors or self.correct in self.errors or self.bad_fix == self.correct:
            raise ValueError(f"slot {self} has an 'error' equal to its correct form")


# ---------------------------------------------------------------- vocabulary
# verb: (base, 3rd person singular, past, past participle, -ing)
VERBS = {
    "eat": ("eat", "eats", "ate", "eaten", "eating"),
    "buy": ("buy", "buys", "bought", "bought", "buying"),
    "see": ("see", "sees", "saw", "seen", "seeing"),
    "take": ("take", "takes", "took", "taken", "taking"),
    "write": ("write", "writes", "wrote", "written", "writing"),
    "drive": ("drive", "drives", "drove", "driven", "driving"),
    "find": ("find", "finds", "found", "found", "finding"),
    "bring": ("bring", "brings", "brought", "brought", "bringing"),
    "draw": ("draw", "draws", "drew", "drawn", "drawing"),
    "sell": ("sell", "sells", "sold", "sold", "selling"),
    "throw": ("throw", "throws", "threw", "thrown", "throwing"),
    "build": ("build", "builds", "built", "built", "building"),
    "catch": ("catch", "catches", "caught", "caught", "catching"),
    "choose": ("choose", "chooses", "chose", "chosen", "choosing"),
    "forget": ("forget", "forgets", "forgot", "forgotten", "forgetting"),
    "steal": ("steal", "steals", "stole", "stolen", "stealing"),
    "hide": ("hide", "hides", "hid", "hidden", "hiding"),
    "break": ("break", "breaks", "broke", "broken", "breaking"),
    "make": ("make", "makes", "made", "made", "making"),
    "ride": ("ride", "rides", "rode", "ridden", "riding"),
    "wear": ("wear", "wears", "wore", "worn", "wearing"),
    "lose": ("lose", "loses", "lost", "lost", "losing"),
    "keep": ("keep", "keeps", "kept", "kept", "keeping"),
    "hold": ("hold", "holds", "held", "held", "holding"),
    "carry": ("carry", "carries", "carried", "carried", "carrying"),
    "paint": ("paint", "paints", "painted", "painted", "painting"),
    "wash": ("wash", "washes", "washed", "washed", "washing"),
    "cook": ("cook", "cooks", "cooked", "cooked", "cooking"),
    "clean": ("clean", "cleans", "cleaned", "cleaned", "cleaning"),
    "visit": ("visit", "visits", "visited", "visited", "visiting"),
    "want": ("want", "wants", "wanted", "wanted", "wanting"),
    "like": ("like", "likes", "liked", "liked", "liking"),
    "need": ("need", "needs", "needed", "needed", "needing"),
    "watch": ("watch", "watches", "watched", "watched", "watching"),
    "give": ("give", "gives", "gave", "given", "giving"),
    "send": ("send", "sends", "sent", "sent", "sending"),
    "show": ("show", "shows", "showed", "shown", "showing"),
    "lend": ("lend", "lends", "lent", "lent", "lending"),
    "teach": ("teach", "teaches", "taught", "taught", "teaching"),
    "tell": ("tell", "tells", "told", "told", "telling"),
    "go": ("go", "goes", "went", "gone", "going"),
    "run": ("run", "runs", "ran", "run", "running"),
    "swim": ("swim", "swims", "swam", "swum", "swimming"),
    "sing": ("sing", "sings", "sang", "sung", "singing"),
    "sleep": ("sleep", "sleeps", "slept", "slept", "sleeping"),
    "fly": ("fly", "flies", "flew", "flown", "flying"),
    "sit": ("sit", "sits", "sat", "sat", "sitting"),
    "fall": ("fall", "falls", "fell", "fallen", "falling"),
    "come": ("come", "comes", "came", "come", "coming"),
    "walk": ("walk", "walks", "walked", "walked", "walking"),
    "play": ("play", "plays", "played", "played", "playing"),
    "work": ("work", "works", "worked", "worked", "working"),
    "wait": ("wait", "waits", "waited", "waited", "waiting"),
    "dance": ("dance", "dances", "danced", "danced", "dancing"),
    "read": ("read", "reads", "read", "read", "reading"),
    "drink": ("drink", "drinks", "drank", "drunk", "drinking"),
    "meet": ("meet", "meets", "met", "met", "meeting"),
    "fix": ("fix", "fixes", "fixed", "fixed", "fixing"),
    "open": ("open", "opens", "opened", "opened", "opening"),
    "feed": ("feed", "feeds", "fed", "fed", "feeding"),
    "wake": ("wake", "wakes", "woke", "woken", "waking"),
    "leave": ("leave", "leaves", "left", "left", "leaving"),
}
# What a learner writes for the past of an irregular verb (over-regularised forms).
REGULARISED_PAST = {
    "eat": "eated", "buy": "buyed", "see": "seed", "take": "taked", "write": "writed",
    "drive": "drived", "find": "finded", "bring": "bringed", "draw": "drawed", "sell": "selled",
    "throw": "throwed", "build": "builded", "catch": "catched", "choose": "choosed",
    "forget": "forgetted", "steal": "stealed", "hide": "hided", "break": "breaked",
    "make": "maked", "ride": "rided", "wear": "weared", "lose": "losed", "keep": "keeped",
    "hold": "holded", "give": "gived", "send": "sended", "show": "shew", "lend": "lended",
    "teach": "teached", "tell": "telled", "go": "goed", "run": "runned", "swim": "swimmed",
    "sing": "singed", "sleep": "sleeped", "fly": "flied", "sit": "sitted", "fall": "falled",
    "come": "comed", "read": "readed", "drink": "drinked", "meet": "meeted", "feed": "feeded",
    "wake": "waked", "leave": "leaved",
}

# noun: (singular, plural, what a learner writes as the plural)
NOUNS = {
    "food": ["apple", "egg", "orange", "onion", "banana", "sandwich", "cake", "cookie", "potato",
             "tomato", "peach", "lemon", "pie", "carrot", "olive", "avocado", "muffin", "pear",
             "apricot", "pizza"],
    "thing": ["book", "umbrella", "box", "watch", "key", "bag", "hat", "ball", "letter", "picture",
              "map", "knife", "ticket", "envelope", "camera", "bottle", "glass", "dish", "toy",
              "lamp", "pencil", "shirt", "coat", "jacket", "ring", "clock", "chair", "table",
              "kite", "radio", "oven", "iron", "uniform", "computer", "phone", "card", "poster",
              "blanket", "basket", "candle"],
    "animal": ["dog", "cat", "horse", "elephant", "owl", "bird", "mouse", "fox", "wolf", "rabbit",
               "eagle", "insect", "ant", "octopus", "sheep", "cow", "monkey", "tiger", "duck",
               "goat", "frog", "snake", "lion", "bear", "deer"],
    "person": ["teacher", "doctor", "farmer", "student", "child", "engineer", "artist", "actor",
               "uncle", "aunt", "nurse", "driver", "baker", "pilot", "singer", "officer", "author",
               "neighbour", "woman", "man", "boy", "girl", "baby", "waiter", "editor", "athlete",
               "astronaut", "architect"],
    "vehicle": ["car", "bus", "truck", "bike", "boat", "train", "taxi", "airplane", "ambulance",
                "van", "scooter", "motorcycle", "ship"],
    "place": ["house", "city", "village", "island", "office", "hotel", "airport", "library",
              "museum", "garden", "school", "hospital", "restaurant", "university", "apartment",
              "church", "farm", "market", "station", "hour"],
}
IRREGULAR_PLURALS = {
    "child": ("children", "childs"), "mouse": ("mice", "mouses"), "woman": ("women", "womans"),
    "man": ("men", "mans"), "sheep": ("sheep", "sheeps"), "knife": ("knives", "knifes"),
    "wolf": ("wolves", "wolfs"), "deer": ("deer", "deers"), "potato": ("potatoes", "potatos"),
    "tomato": ("tomatoes", "tomatos"), "person": ("people", "persons"),
}
# The sound, not the letter, picks the article.
AN_WORDS = {"hour", "honest", "honour"}
A_WORDS = {"university", "uniform", "unicorn", "useful", "european", "one"}
ADJECTIVES = ["old", "new", "small", "big", "red", "blue", "green", "young", "quiet", "heavy",
              "empty", "orange", "ugly", "expensive", "honest", "useful", "interesting", "angry",
              "tiny", "huge", "clever", "friendly", "ancient", "unusual", "awful", "elegant"]
# adjective: (comparative, learner error, careless "fix")
COMPARATIVES = {
    "big": "bigger", "small": "smaller", "tall": "taller", "fast": "faster", "old": "older",
    "young": "younger", "happy": "happier", "busy": "busier", "hot": "hotter", "cold": "colder",
    "long": "longer", "short": "shorter", "cheap": "cheaper", "strong": "stronger",
    "quiet": "quieter", "heavy": "heavier", "large": "larger", "nice": "nicer", "wide": "wider",
    "easy": "easier", "slow": "slower", "clean": "cleaner", "dark": "darker", "warm": "warmer",
    "good": "better", "bad": "worse", "far": "farther", "beautiful": "more beautiful",
    "expensive": "more expensive", "interesting": "more interesting",
    "difficult": "more difficult", "comfortable": "more comfortable", "dangerous": "more dangerous",
    "famous": "more famous", "popular": "more popular", "modern": "more modern",
    "careful": "more careful", "useful": "more useful", "important": "more important",
}
IRREGULAR_COMPARATIVE_ERRORS = {"good": "gooder", "bad": "badder", "far": "farer"}
NAMES = ["Tom", "Anna", "Maria", "David", "Sara", "Ali", "Chen", "Lucy", "Omar", "Emma", "Jack",
         "Priya", "Kenji", "Fatima", "Leo", "Nina", "Paul", "Rosa", "Ivan", "Mei", "Sam", "Olga",
         "Carlos", "Hana"]
KIN = ["my sister", "my brother", "my mother", "my father", "our neighbour", "my friend",
       "her cousin", "his uncle", "my grandmother", "our teacher", "the old farmer",
       "the new student", "the young doctor", "my best friend", "the tall boy", "the little girl"]
PLURAL_SUBJECTS = ["my parents", "the children", "our neighbours", "the students", "my friends",
                   "the farmers", "the workers", "my cousins", "the tourists", "the nurses",
                   "the twins", "the players"]
TAIL_TIMES = ["yesterday", "last week", "last night", "last summer", "two days ago", "on Monday",
              "last year", "on Saturday"]
PAST_TIMES = ["Yesterday", "Last week", "Last night", "Last summer", "Two days ago",
              "On Monday", "This morning", "Last year", "A week ago", "On Saturday"]
HABITUAL = ["every day", "every morning", "on Sundays", "after school", "every weekend",
            "in the evening", "twice a week", "every summer", "before breakfast", "at night"]
PLACES = ["at the market", "in the park", "near the river", "at school", "in the kitchen",
          "at the station", "in the garden", "at the beach", "in the city", "at home",
          "near the bridge", "in the library", "at the zoo", "on the farm"]
NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "ten", "twelve", "many",
           "several", "a few"]
SUBJECT_PRONOUNS = {"I": ("Me", "My"), "he": ("him", "his"), "she": ("her", "hers"),
                    "we": ("us", "our"), "they": ("them", "their")}
OBJECT_PRONOUNS = {"me": ("I", "my"), "him": ("he", "his"), "her": ("she", "hers"),
                   "us": ("we", "our"), "them": ("they", "their")}
# verb -> which nouns make sense as its object
OBJECTS = {
    "eat": ["food"], "buy": ["food", "thing", "vehicle"], "see": ["animal", "person", "vehicle"],
    "take": ["thing"], "draw": ["animal", "thing"], "sell": ["thing", "food", "vehicle"],
    "throw": ["thing"], "catch": ["animal"], "choose": ["thing", "food"],
    "forget": ["thing"], "steal": ["thing", "food"], "hide": ["thing", "food"],
    "break": ["thing"], "make": ["food"], "ride": ["vehicle"],
    "lose": ["thing"], "keep": ["thing", "animal"], "hold": ["thing", "animal"],
    "carry": ["thing", "food"], "wash": ["thing", "vehicle"],
    "cook": ["food"], "clean": ["thing", "vehicle"], "visit": ["place", "person"],
    "want": ["thing", "food", "animal"], "like": ["animal", "food"], "need": ["thing"],
    "watch": ["animal", "person"], "find": ["thing", "animal"], "bring": ["thing", "food"],
    "drive": ["vehicle"], "feed": ["animal"], "fix": ["thing", "vehicle"], "open": ["thing"],
    "meet": ["person"],
}
# verbs whose objects come from a short list of their own
OWN_OBJECTS = {"write": ["letter", "card", "poster", "map"],
               "build": ["table", "chair", "boat", "kite", "box", "house", "lamp"],
               "wear": ["hat", "coat", "jacket", "shirt", "ring", "uniform", "watch", "scarf"],
               "paint": ["house", "chair", "table", "boat", "picture", "wall", "fence"]}
GIVE_VERBS = ["give", "send", "show", "lend", "bring", "buy", "make", "teach", "tell", "find"]
GIVE_OBJECTS = {"teach": ["song", "lesson", "game", "trick"], "tell": ["story", "joke", "secret"]}
MOTION = {"go": "went", "run": "ran", "swim": "swam", "walk": "walked", "fly": "flew",
          "come": "came", "sleep": "slept", "sit": "sat", "dance": "danced", "play": "played",
          "work": "worked", "wait": "waited", "sing": "sang", "read": "read", "fall": "fell"}
INTRANSITIVE_PLACES = {
    "go": PLACES, "run": ["in the park", "near the river", "at the beach", "on the farm"],
    "swim": ["in the river", "in the lake", "at the beach", "in the sea"],
    "walk": PLACES, "fly": ["over the city", "over the river", "over the farm"],
    "come": ["home late", "to the party", "to school early"], "sleep": ["at home", "on the sofa",
    "in the garden"], "sit": ["in the garden", "near the window", "in the kitchen"],
    "dance": ["at the party", "in the kitchen", "at the wedding"], "play": ["in the park",
    "at school", "in the garden", "at the beach"], "work": ["at the station", "on the farm",
    "in the city", "at home"], "wait": ["at the station", "near the bridge", "at the airport"],
    "sing": ["at the party", "in the kitchen", "at school"], "read": ["in the library", "at home",
    "in the garden"], "fall": ["in the kitchen", "near the river", "at school"],
}


def vocabulary() -> set[str]:
    """Every word the generator can use (for the README's size claim and a test)."""
    words: set[str] = set()
    for forms in VERBS.values():
        words.update(forms)
    for group in NOUNS.values():
        for noun in group:
            words.update([noun, plural_of(noun)[0]])
    for phrase in (ADJECTIVES + list(COMPARATIVES) + list(COMPARATIVES.values()) + NAMES + KIN
                   + PLURAL_SUBJECTS + PAST_TIMES + HABITUAL + PLACES + NUMBERS
                   + list(SUBJECT_PRONOUNS) + list(OBJECT_PRONOUNS)):
        words.update(phrase.lower().split())
    return words


# ---------------------------------------------------------------- word forms
def article_for(word: str) -> str:
    w = word.lower()
    if w in AN_WORDS:
        return "an"
    if w in A_WORDS:
        return "a"
    return "an" if w[0] in "aeiou" else "a"


def plural_of(noun: str) -> tuple[str, str]:
    """(correct plural, the plural a learner over-regularises to)."""
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es", noun + "s"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies", noun + "s"
    return noun + "s", noun + "'s"


def article_slot(word: str) -> Slot:
    right = article_for(word)
    wrong = "a" if right == "an" else "an"
    return Slot("article", right, (wrong,), "the a" if right == "an" else "the an")


def noun_phrase(rng: random.Random, kinds: list[str], allow_plural: bool = True) -> list:
    """A singular noun with its article slot (maybe an adjective first), or a number and a plural."""
    noun = rng.choice(NOUNS[rng.choice(kinds)])
    right, regularised = plural_of(noun)
    if allow_plural and right != noun and rng.random() < 0.4:  # "two sheep" has nothing to correct
        number = rng.choice(NUMBERS)
        return [number, Slot("plural", right, (noun,), regularised)]
    if rng.random() < 0.35:
        adjective = rng.choice(ADJECTIVES)
        return [article_slot(adjective), adjective, noun]
    return [article_slot(noun), noun]


def subject(rng: random.Random, plural: bool | None = None) -> tuple[list, bool]:
    """A subject and whether it is third person singular (which decides verb agreement)."""
    plural = rng.random() < 0.4 if plural is None else plural
    if rng.random() < 0.3:
        pronoun = rng.choice(["I", "we", "they"] if plural else ["he", "she"])
        wrong, bad = SUBJECT_PRONOUNS[pronoun]
        slot = Slot("pronoun", pronoun, (wrong,), bad)
        return [slot], pronoun in ("he", "she")
    if plural:
        return [rng.choice(PLURAL_SUBJECTS)], False
    return [rng.choice(NAMES + KIN)], True


def present_slot(verb: str, third_singular: bool) -> Slot:
    base, s_form, _, _, ing = VERBS[verb]
    right, wrong = (s_form, base) if third_singular else (base, s_form)
    return Slot("agreement", right, (wrong,), ing)


def past_slot(verb: str) -> Slot:
    base, s_form, past, participle, _ = VERBS[verb]
    errors = (REGULARISED_PAST[verb], base) if verb in REGULARISED_PAST else (base,)
    errors = tuple(e for e in errors if e != past)  # "read" is its own past: only "readed" is an error
    # A careless fix reaches for the participle ("she gone"), or the present when they coincide.
    bad = participle if participle != past else s_form
    return Slot("past_tense", past, errors, bad)


def be_slot(third_singular: bool, first_singular: bool = False) -> Slot:
    if first_singular:
        return Slot("agreement", "am", ("is",), "be")
    right, wrong = ("is", "are") if third_singular else ("are", "is")
    return Slot("agreement", right, (wrong,), "be")


def comparative_slot(adjective: str) -> Slot:
    right = COMPARATIVES[adjective]
    if right.startswith("more "):
        error = adjective + "er"
        return Slot("comparative", right, (error,), "more " + error)
    error = IRREGULAR_COMPARATIVE_ERRORS.get(adjective, "more " + adjective)
    return Slot("comparative", right, (error,), "more " + right)


# ---------------------------------------------------------------- sentence frames
def object_phrase(rng: random.Random, verb: str) -> list:
    if verb in OWN_OBJECTS:
        noun = rng.choice(OWN_OBJECTS[verb])
        return [article_slot(noun), noun]
    return noun_phrase(rng, OBJECTS[verb])


def frame_past(rng: random.Random) -> list:
    """Yesterday my sister bought an old umbrella at the market."""
    parts = [rng.choice(PAST_TIMES)]
    subj, _ = subject(rng)
    parts += subj
    if rng.random() < 0.3:
        verb = rng.choice(list(MOTION))
        return parts + [past_slot(verb), rng.choice(INTRANSITIVE_PLACES[verb]), "."]
    verb = rng.choice(list(OBJECTS) + list(OWN_OBJECTS))
    parts.append(past_slot(verb))
    parts += object_phrase(rng, verb)
    if rng.random() < 0.5:
        parts.append(rng.choice(PLACES))
    return parts + ["."]


def frame_present(rng: random.Random) -> list:
    """The teacher reads a book every evening."""
    subj, third = subject(rng)
    verb = rng.choice(list(OBJECTS) + list(OWN_OBJECTS))
    parts = subj + [present_slot(verb, third)]
    parts += object_phrase(rng, verb)
    return parts + [rng.choice(HABITUAL), "."]


def frame_comparative(rng: random.Random) -> list:
    """My brother is taller than an average student."""
    adjective = rng.choice(list(COMPARATIVES))
    if rng.random() < 0.5:
        subj, third = subject(rng)
        first = subj[0].correct == "I" if isinstance(subj[0], Slot) else False
        other = rng.choice(NOUNS["person"] + NOUNS["animal"])
    else:
        kind = rng.choice(["vehicle", "place", "animal", "thing"])
        noun = rng.choice(NOUNS[kind])
        subj, third, first = [rng.choice(["my", "this", "her", "our", "the"]), noun], True, False
        other = rng.choice(NOUNS[kind])
    return subj + [be_slot(third, first), comparative_slot(adjective), "than",
                   article_slot(other), other, "."]


def frame_giving(rng: random.Random) -> list:
    """On Monday my uncle gave her an orange at the party."""
    subj, _ = subject(rng)
    verb = rng.choice(GIVE_VERBS)
    pronoun = rng.choice(list(OBJECT_PRONOUNS))
    wrong, bad = OBJECT_PRONOUNS[pronoun]
    parts = subj + [past_slot(verb), Slot("pronoun", pronoun, (wrong,), bad)]
    if verb in GIVE_OBJECTS:
        noun = rng.choice(GIVE_OBJECTS[verb])
        parts += [article_slot(noun), noun]
    else:
        parts += noun_phrase(rng, ["thing", "food"])
    # A time marker makes the past tense the only right one.
    if rng.random() < 0.5:
        return [rng.choice(PAST_TIMES)] + parts + ["."]
    return parts + [rng.choice(TAIL_TIMES), "."]


def frame_pair_subject(rng: random.Random) -> list:
    """Anna and I visited a museum last summer."""
    pronoun = rng.choice(["I", "he", "she"])
    wrong, bad = SUBJECT_PRONOUNS[pronoun]
    name = rng.choice(NAMES)
    verb = rng.choice(list(OBJECTS) + list(OWN_OBJECTS))
    parts = [name, "and", Slot("pronoun", pronoun, (wrong,), bad)]
    if rng.random() < 0.5:
        parts.append(past_slot(verb))
        tail = [rng.choice(TAIL_TIMES)]  # without a time the present would be right too
    else:
        parts.append(present_slot(verb, third_singular=False))
        tail = [rng.choice(HABITUAL)]
    parts += object_phrase(rng, verb)
    return parts + tail + ["."]


FRAMES = (frame_past, frame_present, frame_comparative, frame_giving, frame_pair_subject)


def render(parts: list, forms: dict[int, str] | None = None) -> str:
    """The sentence with each slot at its correct form, except the slots named in `forms`."""
    forms = forms or {}
    words = []
    for i, part in enumerate(parts):
        word = forms.get(i, part.correct) if isinstance(part, Slot) else part
        if word:
            words.append(word)
    text = " ".join(words).replace(" .", ".").replace(" ,", ",")
    return text[0].upper() + text[1:]


# ---------------------------------------------------------------- items and answers
@dataclass(frozen=True)
class Item:
    """One learner sentence with exactly one error; `correct` is all the gold checker needs."""

    category: str
    parts: tuple
    error_slot: int
    error_form: str

    @property
    def sentence(self) -> str:
        return render(list(self.parts), {self.error_slot: self.error_form})

    @property
    def correct(self) -> str:
        return render(list(self.parts))

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(sentence=self.sentence)


def sample_item(rng: random.Random, category: str) -> Item:
    """Draw frames until one has a slot of `category`, then put a learner error there."""
    while True:
        parts = rng.choice(FRAMES)(rng)
        slots = [i for i, p in enumerate(parts) if isinstance(p, Slot) and p.category == category]
        n_words = len(render(parts).split())
        if slots and 4 <= n_words <= 14:
            index = rng.choice(slots)
            return Item(category, tuple(parts), index, rng.choice(parts[index].errors))


RAMBLE_BEFORE = ["Sure, let me help you with that sentence.", "Good question, grammar can be tricky.",
                 "Well, I think I can fix this one for you.", "Let me read it again carefully first."]
RAMBLE_AFTER = ["I hope this helps you with your English.", "Keep practising and you will improve.",
                "Grammar rules are not always easy to remember.", "Let me know if you need more help."]


def answer(item: Item, kind: str, rng: random.Random) -> str:
    """The tutor's response text (with the leading space that follows 'Answer:')."""
    parts = list(item.parts)
    if kind == "correct":
        text = item.correct
    elif kind == "uncorrected":
        text = item.sentence
    elif kind == "bad_fix":
        text = render(parts, {item.error_slot: parts[item.error_slot].bad_fix})
    elif kind == "new_error":
        others = [i for i, p in enumerate(parts) if isinstance(p, Slot) and i != item.error_slot]
        if not others:  # a sentence with a single slot cannot gain a second error
            return answer(item, "bad_fix", rng)
        other = rng.choice(others)
        text = render(parts, {other: parts[other].errors[0]})
    elif kind == "rambling":
        text = f"{rng.choice(RAMBLE_BEFORE)} {item.correct} {rng.choice(RAMBLE_AFTER)}"
    else:
        raise ValueError(f"unknown answer kind {kind!r}")
    return " " + text


# ---------------------------------------------------------------- the data sets
def _category_cycle(n: int, rng: random.Random) -> list[str]:
    """Categories in equal shares (to within one), in a seeded order."""
    cats = [CATEGORIES[i % len(CATEGORIES)] for i in range(n)]
    rng.shuffle(cats)
    return cats


def _weighted_choice(rng: random.Random, weights: dict[str, float]) -> str:
    names = sorted(weights)
    return rng.choices(names, weights=[weights[k] for k in names])[0]


def generate(seed: int, n_pairs: int, n_sft: int, n_gold: int, tutor_noise: dict[str, float],
             rejected_kinds: dict[str, float], n_validation: int = 0, n_judge: int = 0) -> dict[str, list[dict]]:
    """Preference pairs, noisy-tutor SFT demonstrations, gold prompts, validation prompts (for choosing settings,
    so that the held-out and gold figures are reported, not tuned on) and fresh judge pairs (drawn like the
    pairs, to measure the reward model on data no stage trains on), with no sentence shared between any two of
    them. Each set has its own random stream, drawn in this order, so a set never changes when only the sets
    drawn after it change size."""
    unknown = set(tutor_noise) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories in tutor_noise: {sorted(unknown)}")
    # One random stream per set: the SFT and gold sets do not change when only pair settings do.
    streams = {name: random.Random(f"{seed}/{name}") for name in ("pairs", "sft", "gold", "validation", "judge")}
    seen: set[str] = set()

    def fresh_items(n: int, rng: random.Random) -> list[Item]:
        items = []
        for category in _category_cycle(n, rng):
            while True:
                item = sample_item(rng, category)
                if item.correct not in seen:
                    seen.add(item.correct)
                    items.append(item)
                    break
        return items

    def record(item: Item) -> dict:
        return {"prompt": item.prompt, "category": item.category, "correct": item.correct}

    # Gold and SFT sentences are drawn first, so the pair settings cannot change them through `seen`.
    gold = [record(item) for item in fresh_items(n_gold, streams["gold"])]
    rng = streams["sft"]
    sft = []
    for item in fresh_items(n_sft, rng):
        mistaken = rng.random() < tutor_noise.get(item.category, 0.0)
        kind = HABITS[item.category] if mistaken else "correct"
        sft.append({**record(item), "response": answer(item, kind, rng), "tutor_kind": kind})

    def preference_pairs(n: int, rng: random.Random) -> list[dict]:
        pairs = []
        for item in fresh_items(n, rng):
            kind = _weighted_choice(rng, rejected_kinds)
            kind = HABITS[item.category] if kind == "habit" else kind
            rejected = answer(item, kind, rng)
            if rejected.strip() == item.correct:  # cannot happen with one error per item; keep it honest
                raise AssertionError(f"rejected equals chosen for {item.prompt!r}")
            pairs.append({**record(item), "chosen": answer(item, "correct", rng), "rejected": rejected,
                          "rejected_kind": kind})
        return pairs

    pairs = preference_pairs(n_pairs, streams["pairs"])
    validation = [record(item) for item in fresh_items(n_validation, streams["validation"])]
    judge = preference_pairs(n_judge, streams["judge"])
    return {"pairs": pairs, "sft": sft, "gold": gold, "validation": validation, "judge": judge}

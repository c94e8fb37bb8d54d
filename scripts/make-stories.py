#!/usr/bin/env python3
"""Writes the small demo corpus of simplex-train: short made-up stories from templates.

Deterministic (seeded), no downloads, public domain (written for this repository). Each story
reuses its characters' names and objects in later sentences, so a model that attends back to
the start of the story predicts it better than a bigram model. Stories are separated by
`<|endoftext|>` (simplex's default --doc-sep), one file per part.

    python3 scripts/make-stories.py crates/simplex-train/corpus
"""
import random
import sys
from pathlib import Path

NAMES = ["Pip", "Mara", "Tobin", "Lila", "Oskar", "Nell", "Bram", "Ivy", "Rufus", "Tess",
         "Milo", "Greta", "Hugo", "Wren", "Felix", "Juno", "Otto", "Clara", "Arlo", "Poppy",
         "Jasper", "Elsie", "Finn", "Maple", "Cosmo", "Hazel", "Dex", "Luna", "Basil", "Ada"]
ANIMALS = ["fox", "rabbit", "mouse", "bear", "owl", "cat", "dog", "frog", "duck", "badger",
           "squirrel", "hedgehog", "goat", "pig", "turtle", "crow", "otter", "deer", "lamb", "wolf"]
ADJS = ["little", "brave", "shy", "curious", "sleepy", "clever", "kind", "grumpy", "happy",
        "tiny", "old", "young", "quiet", "cheerful", "careful", "silly"]
PLACES = ["a small house by the river", "a hollow tree in the forest", "a farm on the hill",
          "a cottage near the sea", "a burrow under the old oak", "a village in the valley",
          "a barn full of hay", "a garden behind the school", "a boat on the lake",
          "a cave in the mountains", "a nest high in a pine tree", "a town with a big clock"]
OBJECTS = ["red ball", "blue kite", "shiny stone", "wooden boat", "yellow hat", "old map",
           "silver key", "green umbrella", "small drum", "paper star", "warm scarf",
           "glass jar", "golden bell", "toy train", "striped sock", "picture book"]
FOODS = ["apples", "honey", "bread", "carrots", "berries", "soup", "cheese", "nuts", "pie",
         "cookies", "pears", "jam"]
WEATHER = ["the sun was bright", "it was raining", "the wind was strong", "snow was falling",
           "the sky was grey", "the air was warm", "fog covered the fields", "the stars were out"]
FEELINGS = ["happy", "sad", "worried", "excited", "tired", "proud", "scared", "surprised"]
PLACES2 = ["the river", "the market", "the forest", "the hill", "the beach", "the park",
           "the meadow", "the bridge", "the pond", "the old mill"]


def story(r: random.Random) -> str:
    a, b = r.sample(NAMES, 2)
    an, bn = r.sample(ANIMALS, 2)
    adj = r.choice(ADJS)
    obj = r.choice(OBJECTS)
    food = r.choice(FOODS)
    place = r.choice(PLACES)
    where = r.choice(PLACES2)
    feel = r.choice(FEELINGS)
    s = []
    s.append(f"Once upon a time, there was a {adj} {an} named {a}. {a} lived in {place}.")
    s.append(f"{a} had a {obj}. Every day, {a} played with the {obj} and was very {r.choice(['happy', 'glad', 'pleased'])}.")
    s.append(f"One day, {r.choice(WEATHER)}, and {a} went to {where}.")
    s.append(f"At {where}, {a} met a {bn} named {b}. \"Hello, {b}!\" said {a}. \"Hello, {a}!\" said {b}.")
    twist = r.randrange(4)
    if twist == 0:
        s.append(f"{b} looked {feel}. \"I lost my {obj2(r, obj)},\" said {b}. \"Can you help me find it?\"")
        lost = s[-1].split("my ")[1].split(",")[0]
        s.append(f"{a} wanted to help. {a} and {b} looked under the rocks and behind the trees.")
        s.append(f"At last, {a} found the {lost} near {r.choice(PLACES2)}. {b} was so happy that {b} gave {a} some {food}.")
    elif twist == 1:
        s.append(f"{b} wanted to play with the {obj}. {a} did not want to share the {obj}.")
        s.append(f"{b} felt sad and walked away. Then {a} felt sorry.")
        s.append(f"{a} ran after {b} and said, \"You can play with my {obj}, {b}.\" They played together until dinner.")
    elif twist == 2:
        s.append(f"\"I am hungry,\" said {b}. \"Do you have any {food}?\"")
        s.append(f"{a} took {b} home to {place}. They ate {food} and drank warm milk.")
        s.append(f"After dinner, {a} showed {b} the {obj}. {b} said it was the best {obj} in the world.")
    else:
        s.append(f"Suddenly, a big storm came. {a} and {b} were {r.choice(['scared', 'worried', 'cold'])}.")
        s.append(f"{a} held the {obj} and said, \"Follow me, {b}! I know the way home.\"")
        s.append(f"They ran back to {place}, and soon the storm was over. {b} said, \"Thank you, {a}. You are a good friend.\"")
    if r.random() < 0.5:
        s.append(f"From that day on, {a} the {an} and {b} the {bn} were best friends.")
    else:
        s.append(f"That night, {a} went to sleep with the {obj} and dreamed about {where}.")
    s.append("The end.")
    return " ".join(s)


def obj2(r: random.Random, obj: str) -> str:
    return r.choice([o for o in OBJECTS if o != obj])


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus")
    out.mkdir(parents=True, exist_ok=True)
    r = random.Random(20250601)
    for part in range(3):
        stories = [story(r) for _ in range(300)]
        text = "\n<|endoftext|>\n".join(stories) + "\n"
        (out / f"stories-{part}.txt").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

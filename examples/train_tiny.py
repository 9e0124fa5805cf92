"""
A tiny train.py in the shape of autoresearch's: the hyperparameters are top-level constants,
the run has a fixed compute budget, and the last line printed is `val_bpb: X`.

It trains a real character-level language model (a one-hidden-layer MLP over the previous
CONTEXT characters) on a small embedded text with plain SGD, in pure Python on one CPU core
in about a second, and reports bits per byte on held-out text. Same source, same number:
everything is seeded and no clock is read.

The budget is counted in multiply-adds, not seconds (autoresearch uses 5 minutes of GPU time):
a wider model gets fewer steps, so HIDDEN has an interior optimum, as LEARNING_RATE does.
"""

import math
import random

# ---------------------------------------------------------------------------
# Hyperparameters (edit these)
# ---------------------------------------------------------------------------

LEARNING_RATE = 0.05  # peak SGD step size; decays linearly to zero
HIDDEN = 32  # hidden units (wider learns more per step but gets fewer steps)
CONTEXT = 3  # characters the model sees before the one it predicts
INIT_SCALE = 0.5  # standard deviation of the initial weights, times 1/sqrt(fan-in)
WEIGHT_DECAY = 0.0  # L2 pull towards zero per step, scaled by the step size
WARMUP_RATIO = 0.05  # fraction of the steps spent ramping the step size up
COMPUTE_BUDGET = 6_000_000  # training multiply-adds (stands in for TIME_BUDGET)
SEED = 1337  # the random seed

# ---------------------------------------------------------------------------
# Data: a small original text, split 85/15 into train and validation
# ---------------------------------------------------------------------------

TEXT = """
the harbor wakes before the town does. at first light the boats go out past the stone wall,
one after another, and the gulls follow them until the water turns from green to grey. the
men on the boats do not talk much in the morning. they check the nets, they drink their tea,
and they watch the sky for the wind that will come later in the day.
in the town the baker opens her shop and the smell of bread goes down the street to the
square. the children walk to school in pairs and in threes, and the old dog that sleeps by
the fountain lifts its head to watch them pass. the clock on the town hall is five minutes
slow, and everyone knows it, and nobody has ever asked for it to be fixed.
by noon the market is full. there are apples and onions and cheese, there are fish from the
morning boats laid out on ice, and there is a man who sells string and nails and buttons from
a cart that has not moved in thirty years. people stop to talk in the shade of the trees. they
talk about the weather, about the price of fish, about the new road that the council wants to
build along the coast. some of them want the road and some of them do not, and the argument
has gone on for so long that it has become a kind of song that everyone knows the words to.
in the afternoon the wind comes, as the men on the boats knew it would. it comes from the west
and it brings the smell of rain. the boats turn for home one after another, and the gulls
come back with them, loud and hungry. the women who mend the nets sit on the wall and count
the boats as they come in. when the last one is tied up they go home, and the harbor is quiet
again except for the sound of the water on the stones.
in the evening the lights come on in the windows. the baker counts the money from the day and
puts it in a tin under the counter. the children do their lessons at the kitchen table. the
old dog walks slowly home from the fountain to the house where it has lived for fourteen
years. the clock on the town hall strikes nine, five minutes late, and the town goes to sleep.
the rain comes in the night. it falls on the roofs and on the square and on the boats in the
harbor. it fills the fountain and runs down the street to the sea. in the morning the stones
are dark and wet and the air is clean, and the boats go out again past the wall, one after
another, and the gulls follow them until the water turns from green to grey.
in the winter the days are short and the sea is rough, and the boats stay in the harbor for
weeks at a time. the men mend their boats and paint them and talk about the fish they will
catch in the spring. the baker makes the sweet bread with raisins that she makes only in the
winter, and the children press their faces to the window of her shop to watch her work.
in the spring the first warm day brings everyone out into the square. the old men play cards
under the trees and the young ones walk along the wall and look at the sea. the council meets
again about the road, and again nobody agrees, and again they decide to meet next month.
"""

text = " ".join(TEXT.split())
split = int(len(text) * 0.85)
train_text, val_text = text[:split], text[split:]
chars = sorted(set(text))
VOCAB = len(chars)
index = {c: i for i, c in enumerate(chars)}
train_ids = [index[c] for c in train_text]
val_ids = [index[c] for c in val_text]

# ---------------------------------------------------------------------------
# Model: h = tanh(b1 + sum_k W1[k][x_k]) (one-hot inputs, so the first layer is a lookup),
# logits = b2 + W2 h
# ---------------------------------------------------------------------------

random.seed(SEED)
scale1 = INIT_SCALE / math.sqrt(CONTEXT)
scale2 = INIT_SCALE / math.sqrt(HIDDEN)
W1 = [[[random.gauss(0, scale1) for _ in range(HIDDEN)] for _ in range(VOCAB)] for _ in range(CONTEXT)]
b1 = [0.0] * HIDDEN
W2 = [[random.gauss(0, scale2) for _ in range(HIDDEN)] for _ in range(VOCAB)]
b2 = [0.0] * VOCAB


def forward(context):
    pre = b1[:]
    for k, c in enumerate(context):
        row = W1[k][c]
        pre = [p + w for p, w in zip(pre, row)]
    h = [math.tanh(p) for p in pre]
    logits = [b + sum(w * x for w, x in zip(ws, h)) for ws, b in zip(W2, b2)]
    top = max(logits)
    exps = [math.exp(z - top) for z in logits]
    total = sum(exps)
    return h, [e / total for e in exps]


def train_step(context, target, lr):
    h, probs = forward(context)
    probs[target] -= 1.0  # d loss / d logits for cross-entropy
    grad_h = [0.0] * HIDDEN
    shrink = 1.0 - lr * WEIGHT_DECAY
    for v, g in enumerate(probs):
        ws = W2[v]
        grad_h = [gh + g * w for gh, w in zip(grad_h, ws)]
        step = lr * g
        W2[v] = [w * shrink - step * x for w, x in zip(ws, h)]
        b2[v] -= step
    grad_pre = [g * (1.0 - x * x) for g, x in zip(grad_h, h)]
    for k, c in enumerate(context):
        W1[k][c] = [w * shrink - lr * g for w, g in zip(W1[k][c], grad_pre)]
    for j, g in enumerate(grad_pre):
        b1[j] -= lr * g


def bits_per_byte(ids):
    nats = 0.0
    for t in range(CONTEXT, len(ids)):
        _, probs = forward(ids[t - CONTEXT : t])
        nats -= math.log(max(probs[ids[t]], 1e-12))
    # The text is ASCII: one byte per character.
    return nats / math.log(2) / (len(ids) - CONTEXT)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

cost_per_step = 3 * HIDDEN * (VOCAB + CONTEXT)  # forward and backward multiply-adds
steps = max(1, COMPUTE_BUDGET // cost_per_step)
warmup = max(1, int(steps * WARMUP_RATIO))
order = random.Random(SEED + 1)
positions = list(range(CONTEXT, len(train_ids)))
for step in range(steps):
    if step % len(positions) == 0:
        order.shuffle(positions)
    t = positions[step % len(positions)]
    lr = LEARNING_RATE * min((step + 1) / warmup, (steps - step) / (steps - warmup + 1))
    train_step(train_ids[t - CONTEXT : t], train_ids[t], lr)
    if not math.isfinite(b2[0]):
        break

val_bpb = bits_per_byte(val_ids)
if not math.isfinite(val_bpb):
    val_bpb = 99.0
print(f"vocab: {VOCAB}, train chars: {len(train_ids)}, val chars: {len(val_ids)}")
print(f"steps: {steps}, params: {CONTEXT * VOCAB * HIDDEN + HIDDEN + VOCAB * HIDDEN + VOCAB}")
print(f"val_bpb: {val_bpb:.6f}")

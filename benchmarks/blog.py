"""The blog's script, as published: the baseline that `pipeline_wall.py` times against `dvc repro`.

    TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python benchmarks/blog.py loss_accuracy.png [--epochs 100]

김우빈, "순환 신경망( RNN :Recurrent Neural Network)", velog, 29 May 2022, section "tensorflow로
구현하기": the sentence indexed with `set()`, sliding windows of 20 (one print per window),
`to_categorical`, `keras.Input` + `SimpleRNN(100, return_sequences=True)` + `TimeDistributed(Dense
softmax)`, Adam, categorical cross-entropy, `fit` for 100 epochs with Keras' default progress output,
`model.evaluate(verbose=2)` and "Train accuracy:", then the twin-axis loss/accuracy plot. The only
changes: the plot is saved to the file named on the command line instead of `plt.show()` (so the
script runs unattended), matplotlib is imported (the post uses `plt` without showing its import), and
`--epochs` exists for smoke tests only (the comparison uses the blog's 100). No seed, as in the post:
the accuracy varies a little from run to run. The code is formatted by ruff; statements and names
are the blog's.
"""

import argparse

import matplotlib

matplotlib.use("Agg")  # no display: the figure goes to a file
import matplotlib.pyplot as plt

parser = argparse.ArgumentParser(description="The blog's SimpleRNN script (the baseline of pipeline_wall.py).")
parser.add_argument("plot", help="where to save the loss/accuracy figure (the blog calls plt.show())")
parser.add_argument("--epochs", type=int, default=100, help="the blog's 100; fewer only for smoke tests")
args = parser.parse_args()

# ---- the blog's code from here on ----

# module import

import numpy as np  # noqa: E402, F401
import tensorflow as tf  # noqa: E402, F401
from tensorflow import keras  # noqa: E402
from tensorflow.keras import layers  # noqa: E402
from tensorflow.keras.utils import to_categorical  # noqa: E402

# 학습할 문장
sentence = "알엔엔 으로 자연어 처리하기 어렵지 않아요 기본은 전부 같기때문이죠 그래서 제가 쉽게 설명드리려고 하는겁니다 왜냐하면 쉬우니까요"  # 학습할 문장  # noqa: E501

# 시퀀스의 길이 설정
set_sentence = list(set(sentence))
sampledict = {c: i for i, c in enumerate(set_sentence)}
sequencelength = 20

# sequencelength에서 설정한 길이로 문장을 배치 단위로 잘라 학습 데이터 구성
datax = []
datay = []
for i in range(0, len(sentence) - sequencelength):
    xstr = sentence[i : i + sequencelength]
    ystr = sentence[i + 1 : i + sequencelength + 1]
    x1 = [sampledict[c] for c in xstr]
    y1 = [sampledict[c] for c in ystr]
    print("data", i, "input data:", xstr, "output data:", ystr)
    datax.append(x1)
    datay.append(y1)

# 인덱싱
sampleindex = [sampledict[i] for i in sentence]

numberclass = len(sampledict)

# one-hot encoding
xdata_onehot = to_categorical(datax, numberclass)
ydata_onehot = to_categorical(datay, numberclass)


input = keras.Input(shape=(sequencelength, numberclass))
# RNN layer 구성, 학습 데이터 수가 늘었기 때문에 unit 값 100으로 설정
x = layers.SimpleRNN(units=100, return_sequences=True)(input)
output = layers.TimeDistributed(layers.Dense(units=numberclass, activation="softmax"))(x)
model = keras.Model(inputs=input, outputs=output)
model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
hist = model.fit(xdata_onehot, ydata_onehot, epochs=args.epochs)

metrics = model.evaluate(xdata_onehot, ydata_onehot, verbose=2)
print("Train accuracy:", metrics[1])

fig, loss_ax = plt.subplots()
acc_ax = loss_ax.twinx()

loss_ax.plot(hist.history["loss"], "y", label="train loss")
acc_ax.plot(hist.history["accuracy"], "b", label="train accuracy")

loss_ax.set_xlabel("epoch")
loss_ax.set_ylabel("loss")
acc_ax.set_ylabel("accuracy")

loss_ax.legend(loc="upper left")
acc_ax.legend(loc="lower left")

plt.savefig(args.plot)  # the blog: plt.show()

"""paddle_pangu: PanGu-alpha on PaddlePaddle.

Pins follow ../shared/docs/PLATFORM.md (measured on the project machines):
paddlenlp 3.0.0b4 needs aistudio-sdk 0.2.6, pyarrow<20, datasets<3.3 and
numpy<=1.26.4; visualdl 2.5.3 needs protobuf 3.20.3.
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "paddlepaddle==3.3.1",
    "paddlenlp==3.0.0b4",
    "aistudio-sdk==0.2.6",
    "pyarrow<20",
    "datasets<3.3",
    "numpy<=1.26.4",
    "visualdl==2.5.3",
    "protobuf==3.20.3",
    "sentencepiece>=0.1.99",
    "jieba>=0.42.1",
    "pcl-pangu==1.2.6.2",
    "snownlp==0.12.3",
    "datasketch>=1.6",
    "opencc-python-reimplemented>=0.1.7",
    "safetensors>=0.4",
    "pyyaml>=6",
    "tqdm>=4.60",
    "matplotlib==3.11.2",  # pangu evaluate: score-vs-shots PNG (the version in the project venv)
    "scikit-learn>=1.3",
    # pangu serve (OpenAI-compatible HTTP): the versions tested with the openai client below
    "fastapi==0.165.0",
    "uvicorn==0.54.0",
]

# prepare-data --engine ray: plain Ray tasks and the object store (ray_engine.py); Ray Data is not used
RAY = ["ray==2.60.0"]

EXTRAS = {
    # transformers: the HF GPT-2 baseline of `pangu bench --compare` (4.53 fits the tokenizers paddlenlp pins)
    # openai: the official client against `pangu serve`; selenium drives Debian's chromium (web page test)
    "test": ["pytest>=7", "pytest-timeout>=2", "torch==2.13.0", "transformers==4.53.3", "openai==3.57.0",
             "selenium==4.50.0", "hypothesis==6.170.15",  # hypothesis: tests/unit/test_properties.py
             "psutil>=5.9"] + RAY,  # psutil (also visualdl's): the rank-death test finds the job's worker
    "torch": ["torch==2.13.0", "transformers==4.53.3"],
    "ray": RAY,
}

setup(
    name="paddle_pangu",
    version="0.1.0",
    description="PanGu-alpha (arXiv 2104.12369) on PaddlePaddle: model, tokenizer, data, hybrid-parallel training",
    packages=find_packages(include=["paddle_pangu", "paddle_pangu.*"]),
    # compiled on first use (paddle_pangu/kernels, paddle_pangu/tokenizer/fastseg.py)
    package_data={"paddle_pangu.kernels": ["cpu_kernels.cc"], "paddle_pangu.tokenizer": ["jieba_exact.cc"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["pangu = paddle_pangu.cli:main"]},
)

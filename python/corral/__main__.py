"""`python -m corral ...` is `corral ...`: the same binary, with the same arguments."""

import os
import sys

from corral._binary import corral_binary


def main():
    binary = corral_binary()
    os.execv(binary, [binary, *sys.argv[1:]])


if __name__ == "__main__":
    main()

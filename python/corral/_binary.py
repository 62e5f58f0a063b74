"""Where the corral binary is: the one this package installed, or one named by $CORRAL_BIN."""

import os
import shutil
import sysconfig


def corral_binary():
    """The path of the corral binary; FileNotFoundError if there is none."""
    named = os.environ.get("CORRAL_BIN")
    if named:
        return named
    # A wheel puts it in the environment's scripts directory (venv/bin), or the user's.
    candidates = [sysconfig.get_path("scripts")]
    try:
        candidates.append(sysconfig.get_path("scripts", f"{os.name}_user"))
    except KeyError:
        pass
    for directory in candidates:
        path = os.path.join(directory, "corral")
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("corral")
    if found:
        return found
    raise FileNotFoundError(
        "the corral binary is not installed: pip install corral, or set CORRAL_BIN to its path"
    )

# Managed by botvps: remove what a bot's code directory holds beyond its manifest.json.
# argv: ROOT NAME... ; prints every path it removed.
import json
import os
import sys


def main(argv):
    root = argv[0]
    for name in argv[1:]:
        home = os.path.join(root, name)
        app = os.path.join(home, "app")
        with open(os.path.join(home, "manifest.json"), encoding="utf-8") as handle:
            keep = set(json.load(handle))
        for dirpath, dirnames, filenames in os.walk(app, topdown=False):
            for entry in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                path = os.path.join(dirpath, entry)
                if os.path.relpath(path, app) not in keep:
                    os.unlink(path)
                    print(path)
            for entry in dirnames:
                path = os.path.join(dirpath, entry)
                if not os.path.islink(path) and not os.listdir(path):
                    os.rmdir(path)
                    print(path)


if __name__ == "__main__":
    main(sys.argv[1:])

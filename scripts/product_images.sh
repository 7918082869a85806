#!/usr/bin/env bash
# Assemble Fashion Product Images (the 2019 study's data) from two public GitHub repositories:
#   styles.csv  from knowrohit/recommendation-using-ResNet50      (styles.csv.zip, 44,446 rows)
#   images/     from tanmay0401/multimodal-recommendation-engine  (data/images/<id>.jpg, 44,072)
# into DEST/styles.csv + DEST/images/, the folder `dataset.root` (or ROOT=) points at.
#
#   scripts/product_images.sh DEST [STYLES_REPO] [IMAGES_REPO]
#
# A repository is a clone (with or without a work tree) or a URL to clone (needs the network;
# the images repository is about 1 GB). Nothing is written outside DEST; never commit DEST.
set -euo pipefail

usage() { sed -n '2,10s/^# \{0,1\}//p' "$0" >&2; exit 2; }
[[ $# -ge 1 && $# -le 3 && "$1" != -* ]] || usage
dest=$1
styles_repo=${2:-https://github.com/knowrohit/recommendation-using-ResNet50.git}
images_repo=${3:-https://github.com/tanmay0401/multimodal-recommendation-engine.git}

# A local repository as it is; a URL cloned without a work tree into DEST/.repos.
git_dir() {
  if [[ -d "$1" ]]; then
    git -C "$1" rev-parse --absolute-git-dir
  else
    local into="$dest/.repos/$(basename "$1" .git)"
    [[ -d "$into" ]] || git clone --quiet --bare --depth 1 "$1" "$into" >&2
    echo "$into"
  fi
}

mkdir -p "$dest"
styles=$(git_dir "$styles_repo")
images=$(git_dir "$images_repo")

git --git-dir "$styles" show HEAD:styles.csv.zip > "$dest/styles.csv.zip"
python3 -m zipfile -e "$dest/styles.csv.zip" "$dest/"
[[ -f "$dest/styles.csv" ]] || { echo "styles.csv.zip did not hold styles.csv" >&2; exit 1; }
rm "$dest/styles.csv.zip"

# data/images/<id>.jpg -> DEST/images/<id>.jpg, read from the repository's objects (no checkout).
mkdir -p "$dest/images"
git --git-dir "$images" archive HEAD data/images | tar -x -C "$dest/images" --strip-components 2
rm -rf "$dest/.repos"

rows=$(($(wc -l < "$dest/styles.csv") - 1))
photos=$(find "$dest/images" -name '*.jpg' | wc -l)
echo "Fashion Product Images in $dest: styles.csv ($rows rows), images/ ($photos photos)."
echo "  make sweep EXPERIMENT=product_screen ROOT=$dest"

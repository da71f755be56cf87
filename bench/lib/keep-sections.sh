# Sourced by bench scripts that each own part of BENCHMARKS.md.
#
# A script owns either the whole file apart from marked sections (bench/proxy.sh) or one
# section delimited by `<!-- NAME:begin -->` and `<!-- NAME:end -->` lines.

# keep_sections OLD NEW: appends to NEW every marked section of OLD that NEW lacks.
keep_sections() {
    local old=$1 new=$2 name
    [[ -f $old ]] || return 0
    while read -r name; do
        grep -qF "<!-- $name:begin -->" "$new" && continue
        printf '\n' >>"$new"
        sed -n "/^<!-- $name:begin -->\$/,/^<!-- $name:end -->\$/p" "$old" >>"$new"
    done < <(sed -n 's/^<!-- \([a-z0-9-]*\):begin -->$/\1/p' "$old")
}

# put_section FILE NAME CONTENT_FILE: replaces (or appends) the section NAME of FILE.
put_section() {
    local file=$1 name=$2 content=$3 tmp
    tmp=$(mktemp)
    if [[ -f $file ]] && grep -qF "<!-- $name:begin -->" "$file"; then
        awk -v b="<!-- $name:begin -->" -v e="<!-- $name:end -->" -v c="$content" '
            $0 == b { print; while ((getline line < c) > 0) print line; skip = 1; next }
            $0 == e { skip = 0 }
            !skip { print }' "$file" >"$tmp"
    else
        { [[ -f $file ]] && cat "$file" && printf '\n'; echo "<!-- $name:begin -->"; cat "$content"; echo "<!-- $name:end -->"; } >"$tmp"
    fi
    mv "$tmp" "$file"
}

//! Output folders that a command replaces as a whole (a converted model, a merged model, the
//! site's files). A command writes only into a new or empty folder, or into one it wrote before
//! (it holds [`MARKER`]), and never deletes what it did not write. The new contents are written
//! into a temporary sibling and swapped into place, so a kill leaves the old folder or the new one.

use std::path::{Path, PathBuf};

use crate::Error;

/// The file that marks a folder as written by this project's tools.
pub const MARKER: &str = ".emlab-output";

/// Whether `out` may be replaced: not `/`, the home folder, the current folder, the checkout or a
/// folder above any of them; and, if it exists, a folder that is empty, marked as ours, or holds
/// only names in `ours` (what the command itself writes, e.g. a model folder from before the
/// marker; `results.*` matches every name that starts with `results.`).
pub fn check(out: &Path, ours: &[&str]) -> Result<(), Error> {
    let refuse = |why: &str| Err(Error::file(out.display().to_string(), why.to_string()));
    let resolved = resolve(out);
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf);
    let cwd = std::env::current_dir().ok();
    for (what, place) in [
        ("the current folder", cwd),
        ("the home folder", home),
        ("this project's checkout", checkout),
    ] {
        if let Some(place) = place.map(|p| resolve(&p))
            && place.starts_with(&resolved)
        {
            return refuse(&format!(
                "refusing to replace a folder that holds {what}: choose a new folder"
            ));
        }
    }
    if resolved.parent().is_none() {
        return refuse("refusing to replace the root folder: choose a new folder");
    }
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return refuse("exists and is not a folder: choose a new folder");
    }
    let entries = std::fs::read_dir(out)
        .map_err(|e| Error::file(out.display().to_string(), format!("cannot read: {e}")))?;
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let known = |n: &str| {
        ours.iter().any(|o| o.strip_suffix('*').map_or(*o == n, |prefix| n.starts_with(prefix)))
    };
    if names.iter().any(|n| n == MARKER) || names.iter().all(|n| known(n)) {
        return Ok(());
    }
    let others: Vec<&str> =
        names.iter().map(String::as_str).filter(|n| !known(n)).take(3).collect();
    refuse(&format!(
        "not empty and not written by this tool (it holds {}): choose a new or empty folder",
        others.join(", ")
    ))
}

/// Replaces `out` with what `fill` writes into the folder it is given, after [`check`]. The old
/// folder is moved aside and deleted only once the new one is in place.
pub fn replace<E: From<Error>>(
    out: &Path,
    ours: &[&str],
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    check(out, ours)?;
    let sibling = |tag: &str| {
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        parent.join(format!(
            ".{}.{tag}",
            out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ))
    };
    let (tmp, old) = (sibling("partial"), sibling("old"));
    let io = |p: &Path, what: &str| {
        let p = p.display().to_string();
        let what = what.to_string();
        move |e: std::io::Error| Error::file(p, format!("{what}: {e}"))
    };
    for leftover in [&tmp, &old] {
        // Only a leftover of ours (marked) is removed; anything else there stops us.
        if leftover.exists() {
            if !leftover.join(MARKER).exists() {
                return Err(Error::file(
                    leftover.display().to_string(),
                    "is in the way and not ours: move it".into(),
                )
                .into());
            }
            std::fs::remove_dir_all(leftover).map_err(io(leftover, "cannot clear"))?;
        }
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp, "cannot create"))?;
    crate::files::atomic_write(
        &tmp.join(MARKER),
        b"written by emlab; the folder is replaced as a whole on the next export\n",
    )?;
    fill(&tmp)?;
    if out.exists() {
        std::fs::rename(out, &old).map_err(io(out, "cannot move aside"))?;
    }
    std::fs::rename(&tmp, out).map_err(io(out, "cannot move into place"))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old, "cannot remove the previous version"))?;
    }
    Ok(())
}

/// An absolute, normalised path (through symlinks where it exists) for the comparisons above.
fn resolve(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    // The parent may exist (and be a symlink) where the folder does not yet.
    match (out.parent().and_then(|p| std::fs::canonicalize(p).ok()), out.file_name()) {
        (Some(parent), Some(name)) => parent.join(name),
        _ => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("emlab-outdir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn refuses_folders_that_hold_what_it_must_not_delete() {
        for p in [".", "/", "..", env!("CARGO_MANIFEST_DIR")] {
            let err = check(Path::new(p), &[]).unwrap_err().to_string();
            assert!(err.contains("refusing"), "{p}: {err}");
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        assert!(check(root, &[]).unwrap_err().to_string().contains("refusing"));
        assert!(check(&root.join("model/../model"), &[]).is_err(), "paths are normalised first");
        if let Some(home) = std::env::var_os("HOME") {
            assert!(check(Path::new(&home), &[]).is_err());
        }
    }

    #[test]
    fn replaces_only_new_empty_or_own_folders_and_keeps_a_users_files() {
        let d = tmp("replace");
        let out = d.join("model");
        let write = |name: &'static str| {
            move |dir: &Path| -> Result<(), Error> {
                crate::files::atomic_write(&dir.join(name), b"x")
            }
        };
        replace(&out, &["config.json"], write("config.json")).unwrap();
        assert!(out.join(MARKER).exists() && out.join("config.json").exists());
        // Ours: replaced, and the old contents are gone.
        replace(&out, &["model.bin"], write("model.bin")).unwrap();
        assert!(out.join("model.bin").exists() && !out.join("config.json").exists());
        assert!(!d.join(".model.old").exists() && !d.join(".model.partial").exists());
        // A user's folder: refused, untouched.
        let theirs = d.join("theirs");
        std::fs::create_dir_all(&theirs).unwrap();
        std::fs::write(theirs.join("thesis.tex"), b"years of work").unwrap();
        let err = replace(&theirs, &["config.json"], write("config.json")).unwrap_err().to_string();
        assert!(err.contains("not written by this tool") && err.contains("thesis.tex"), "{err}");
        assert_eq!(std::fs::read(theirs.join("thesis.tex")).unwrap(), b"years of work");
        // A folder of only the files the command writes (a model folder from before the marker).
        let older = d.join("older");
        std::fs::create_dir_all(&older).unwrap();
        std::fs::write(older.join("config.json"), b"{}").unwrap();
        std::fs::write(older.join("results.0123.json"), b"{}").unwrap();
        assert!(check(&older, &["config.json"]).is_err());
        replace(&older, &["config.json", "results.*"], write("config.json")).unwrap();
        // A file where the folder should be.
        std::fs::write(d.join("file"), b"x").unwrap();
        assert!(check(&d.join("file"), &[]).unwrap_err().to_string().contains("not a folder"));
        // A failed fill leaves the previous folder as it was.
        let failed = replace(&out, &[], |_: &Path| -> Result<(), Error> {
            Err(Error::Invalid("disk full".into()))
        });
        assert!(failed.is_err() && out.join("model.bin").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}

use std::os::unix::fs::PermissionsExt as _;

use super::*;

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn write_atomic_replaces_the_whole_file_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.cose");
    write_atomic(&path, b"a long first version").unwrap();
    write_atomic(&path, b"second").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    assert_eq!(names(dir.path()), ["root.cose"]);
}

#[test]
fn write_atomic_with_mode_creates_a_private_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.json");
    write_atomic_with_mode(&path, b"{}", 0o600).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn write_atomic_replaces_a_temporary_file_a_crash_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let leftover = dir
        .path()
        .join(format!(".state.{}.tmp", std::process::id()));
    std::fs::write(&leftover, b"half a write").unwrap();
    write_atomic(&path, b"whole").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"whole");
    assert_eq!(names(dir.path()), ["state"]);
}

#[test]
fn a_failed_write_names_the_step_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-folder").join("file");
    let err = write_atomic(&missing, b"x").unwrap_err();
    assert_eq!(err.step, Step::Create);
    assert_eq!(err.path.parent(), missing.parent());
    assert!(
        err.to_string().starts_with(&format!(
            "creating {}",
            dir.path().join("no-such-folder").display()
        )),
        "{err}"
    );

    let err = sync_dir(&dir.path().join("gone")).unwrap_err();
    assert_eq!(err.step, Step::SyncDir);
    assert_eq!(err.path, dir.path().join("gone"));
    assert!(err.to_string().starts_with("syncing folder "), "{err}");
}

#[test]
fn write_atomic_over_a_folder_fails_at_the_rename_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("taken");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("inside"), b"x").unwrap();
    let err = write_atomic(&path, b"x").unwrap_err();
    assert_eq!(err.step, Step::Rename);
    assert_eq!(err.path, path);
    assert_eq!(names(dir.path()), ["taken"]);
}

#[test]
fn write_new_never_replaces_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    write_new(&path, b"first", 0o600).unwrap();
    let err = write_new(&path, b"second", 0o600).unwrap_err();
    assert_eq!(err.step, Step::Create);
    assert_eq!(err.source.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&path).unwrap(), b"first");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

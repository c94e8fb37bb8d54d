//! `simplex prepare --chunk-bytes`: one file far bigger than the chunk gives the same dataset
//! as reading it whole; a chunk below the minimum is an error naming the flag.

mod common;

use common::simplex;

#[test]
fn prepare_in_small_chunks_writes_the_same_dataset() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../simplex-train/corpus");
    // the demo stories, all in one file
    let mut files: Vec<_> = std::fs::read_dir(&corpus)
        .expect("corpus")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let text: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("story file"))
        .collect();
    let big = tmp.path().join("all.txt");
    std::fs::write(&big, &text).expect("write");
    let prep = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args = vec![
            "prepare",
            "--data",
            big.to_str().expect("path"),
            "--out",
            out.to_str().expect("path"),
        ];
        args.extend(extra);
        let (ok, stdout, err) = simplex(&args);
        assert!(ok, "prepare {name} failed: {err}");
        (out, stdout)
    };
    let (whole, said) = prep("whole", &[]);
    let (chunked, said_chunked) = prep("chunked", &["--chunk-bytes", "4096"]);
    assert!(text.len() > 100 * 4096, "{} bytes", text.len());
    let line = |s: &str| s.split_once(": ").map(|(_, r)| r.to_string());
    assert_eq!(line(&said_chunked), line(&said), "same counts");
    let mut names: Vec<_> = std::fs::read_dir(&whole)
        .expect("dataset")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert!(names
        .iter()
        .any(|n| n.to_string_lossy().starts_with("train-")));
    for n in &names {
        let a = std::fs::read(whole.join(n)).expect("file");
        let b = std::fs::read(chunked.join(n)).expect("the same file in the chunked dataset");
        assert!(a == b, "{} differs", n.to_string_lossy());
    }
    let (ok, _, err) = simplex(&[
        "prepare",
        "--data",
        big.to_str().expect("path"),
        "--out",
        tmp.path().join("tiny").to_str().expect("path"),
        "--chunk-bytes",
        "10",
    ]);
    assert!(!ok && err.contains("--chunk-bytes 10"), "{err}");
    assert!(!tmp.path().join("tiny").exists());
}

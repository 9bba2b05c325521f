//! Compiles the small C++ shim that reaches RocksDB's
//! `IngestExternalFileOptions::allow_db_generated_files`, which the C API does not expose.
//! `librocksdb-sys` (a direct dependency pinned to the version `rocksdb` uses) publishes its
//! source directory as `DEP_ROCKSDB_CARGO_MANIFEST_DIR`, so the shim sees the same headers the
//! linked library was built from.

fn main() {
    println!("cargo:rerun-if-changed=src/restore/ingest_shim.cc");
    let rocksdb_dir = std::env::var("DEP_ROCKSDB_CARGO_MANIFEST_DIR").expect(
        "librocksdb-sys must be a direct dependency (it sets DEP_ROCKSDB_CARGO_MANIFEST_DIR)",
    );
    let include = std::path::Path::new(&rocksdb_dir)
        .join("rocksdb")
        .join("include");
    cc::Build::new()
        .cpp(true)
        .file("src/restore/ingest_shim.cc")
        .include(include)
        .flag("-std=c++20")
        // Same settings as librocksdb-sys builds RocksDB with: no RTTI, NDEBUG.
        .flag("-fno-rtti")
        .define("NDEBUG", Some("1"))
        .warnings(false)
        .compile("regroup_ingest_shim");
}

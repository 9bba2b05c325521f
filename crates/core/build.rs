//! Compiles the small C++ shim (`src/rocksdb_shim.cc`) that reaches what RocksDB's C API does
//! not expose: `IngestExternalFileOptions::allow_db_generated_files`, an end-exclusive
//! `DeleteFilesInRange` and a custom SST partitioner.
//! `librocksdb-sys` (a direct dependency pinned to the version `rocksdb` uses) publishes its
//! source directory as `DEP_ROCKSDB_CARGO_MANIFEST_DIR`, so the shim sees the same headers the
//! linked library was built from.

fn main() {
    println!("cargo:rerun-if-changed=src/rocksdb_shim.cc");
    let rocksdb_dir = std::env::var("DEP_ROCKSDB_CARGO_MANIFEST_DIR").expect(
        "librocksdb-sys must be a direct dependency (it sets DEP_ROCKSDB_CARGO_MANIFEST_DIR)",
    );
    let include = std::path::Path::new(&rocksdb_dir)
        .join("rocksdb")
        .join("include");
    cc::Build::new()
        .cpp(true)
        .file("src/rocksdb_shim.cc")
        .include(include)
        .flag("-std=c++20")
        // Same settings as librocksdb-sys builds RocksDB with: no RTTI, NDEBUG.
        .flag("-fno-rtti")
        .define("NDEBUG", Some("1"))
        .warnings(false)
        .compile("regroup_rocksdb_shim");
}

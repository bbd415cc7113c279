// Image folders: root/<class>/*.jpg|*.jpeg|*.png decoded into a Dataset, cached after the first
// decode.
//
// Classes are the sub-folders of root that do not start with '.', sorted by name (label =
// position); the images of a class are its files with extension .jpg, .jpeg or .png (any case),
// sorted by name; other files and nested folders are ignored. Every image must have the same width,
// height and channel count (1 = grey, 3 = RGB, 4 = RGBA, as stored). Decoding uses stb_image on
// several threads.
//
// The cache: after a decode, the images and labels are written to "<root>/.fedtail-cache.bin" or,
// when root is not writable, to "$XDG_CACHE_HOME/fedtail/<hash of root>.bin" (~/.cache/fedtail/
// when XDG_CACHE_HOME is unset); the write is atomic (temporary file + rename). The cache is keyed
// by a fingerprint of the file list, sizes and modification times, so adding, removing or rewriting
// an image invalidates it; a damaged cache file (checksum) is ignored and rewritten. Failing to
// write the cache is not an error (a warning is logged).
//
// Thread-safe: concurrent loads of the same folder may each decode and write the cache; the renames
// make the last complete file win.
#ifndef FEDTAIL_COMMON_DATA_IMAGE_FOLDER_H_
#define FEDTAIL_COMMON_DATA_IMAGE_FOLDER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/base/status.h"
#include "common/data/dataset.h"

namespace fedtail {

struct ImageFolderOptions {
  // Read a valid cache instead of decoding, and write one after decoding.
  bool use_cache = true;
  // Decoder threads; 0 = one per hardware thread.
  int threads = 0;
};

// What a load did (for progress messages and tests).
struct ImageFolderStats {
  bool from_cache = false;     // the images came from a valid cache file
  bool cache_written = false;  // a cache file was written after decoding
  std::string cache_path;      // the cache file read or written ("" if none)
  int64_t images = 0;          // number of images
};

// The sorted class folder names of root. kNotFound if root is not a directory, kInvalidArgument if
// it has no class folders.
Result<std::vector<std::string>> image_folder_classes(const std::string& root);

// Loads the image folder at root: N×C×H×W uint8 images, labels = class positions, class_names = the
// folder names. `stats`, if not null, is filled in (borrowed for the call).
// kNotFound if root is missing or a class folder has no images; kInvalidArgument if root has no
// class folders; kCorruption naming the file if an image cannot be decoded or its size/channels
// differ from the first image's; kIOError if a file cannot be read.
Result<Dataset> load_image_folder(const std::string& root, const ImageFolderOptions& options = {},
                                  ImageFolderStats* stats = nullptr);

}  // namespace fedtail

#endif  // FEDTAIL_COMMON_DATA_IMAGE_FOLDER_H_

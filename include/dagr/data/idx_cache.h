// read_idx with a plain copy of every gzipped file kept in a cache folder, so
// that later reads skip the decompression: every worker of every run reads the
// training set, and inflating Fashion-MNIST's 47 MB of training images takes
// about half a second a process, where reading the plain copy takes a few ms.
//
// The copy's name holds a hash of the gzipped file's absolute path, device,
// inode, size and modification time, so a changed file gets a new copy. A copy
// is written only after the gzipped file was read in full and passed
// read_idx's checks, under a temporary name renamed into place: a reader finds
// a whole copy or none (workers starting together may each write one; the
// last rename wins, with the same bytes). A copy that cannot be read or fails
// read_idx's checks is passed over and written again: the gzipped file stays
// the source, and its errors name it.
//
// The folder: $DAGR_CACHE_DIR, else $XDG_CACHE_HOME/dagr, else
// $HOME/.cache/dagr; DAGR_CACHE_DIR set but empty turns the cache off. A folder
// that cannot be made or written to only means no copy: a read never fails
// because of the cache.
#pragma once

#include <string>

#include "dagr/data/idx.h"

namespace dagr::data {

IdxArray read_idx_cached(const std::string& path);

// Where the plain copy of `path` is or would be; empty when `path` is not a
// gzipped file or there is no cache folder.
std::string idx_cache_path(const std::string& path);

}  // namespace dagr::data

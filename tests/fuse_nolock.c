/*
 * A passthrough FUSE filesystem whose locks are refused: every flock(2) and fcntl(2) lock request
 * answers ENOLCK, as NFSv3 without lockd does. The tests mount it to check that the map store
 * stays correct (or fails with a clear error) where the filesystem has no locks.
 *
 * Usage: fuse_nolock SOURCE MOUNTPOINT [FUSE options, e.g. -f -o attr_timeout=0]
 * Built by tests/fsmounts.py: gcc fuse_nolock.c $(pkg-config --cflags --libs fuse3)
 *
 * Every path is resolved relative to a descriptor of SOURCE opened before mounting, so the
 * filesystem never looks its own mount up.
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <unistd.h>

static int source_fd = -1;

/* "/a/b" -> "a/b", "/" -> "." : a path relative to source_fd */
static const char *rel(const char *path) {
    while (*path == '/')
        path++;
    return *path ? path : ".";
}

static int err(int result) { return result < 0 ? -errno : result; }

static void *nl_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    /* ask the kernel to send flock and POSIX lock requests here, instead of handling them
     * locally in the kernel (which it does when the filesystem does not ask for them) */
    if (conn->capable & FUSE_CAP_FLOCK_LOCKS)
        conn->want |= FUSE_CAP_FLOCK_LOCKS;
    if (conn->capable & FUSE_CAP_POSIX_LOCKS)
        conn->want |= FUSE_CAP_POSIX_LOCKS;
    cfg->use_ino = 1;
    cfg->attr_timeout = 0;
    cfg->entry_timeout = 0;
    cfg->negative_timeout = 0;
    return NULL;
}

static int nl_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    if (fi != NULL)
        return err(fstat((int)fi->fh, st));
    return err(fstatat(source_fd, rel(path), st, AT_SYMLINK_NOFOLLOW));
}

static int nl_access(const char *path, int mask) {
    return err(faccessat(source_fd, rel(path), mask, 0));
}

static int nl_readlink(const char *path, char *buf, size_t size) {
    ssize_t n = readlinkat(source_fd, rel(path), buf, size - 1);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
    return 0;
}

static int nl_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t offset,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
    (void)offset;
    (void)fi;
    (void)flags;
    int fd = openat(source_fd, rel(path), O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return -errno;
    DIR *dir = fdopendir(fd);
    if (dir == NULL) {
        int e = errno;
        close(fd);
        return -e;
    }
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        struct stat st;
        memset(&st, 0, sizeof(st));
        st.st_ino = entry->d_ino;
        st.st_mode = (mode_t)DTTOIF(entry->d_type);
        if (fill(buf, entry->d_name, &st, 0, 0))
            break;
    }
    closedir(dir);
    return 0;
}

static int nl_mknod(const char *path, mode_t mode, dev_t rdev) {
    return err(mknodat(source_fd, rel(path), mode, rdev));
}

static int nl_mkdir(const char *path, mode_t mode) {
    return err(mkdirat(source_fd, rel(path), mode));
}

static int nl_unlink(const char *path) { return err(unlinkat(source_fd, rel(path), 0)); }

static int nl_rmdir(const char *path) {
    return err(unlinkat(source_fd, rel(path), AT_REMOVEDIR));
}

static int nl_symlink(const char *target, const char *path) {
    return err(symlinkat(target, source_fd, rel(path)));
}

static int nl_rename(const char *from, const char *to, unsigned int flags) {
    return err(renameat2(source_fd, rel(from), source_fd, rel(to), flags));
}

static int nl_link(const char *from, const char *to) {
    return err(linkat(source_fd, rel(from), source_fd, rel(to), 0));
}

static int nl_chmod(const char *path, mode_t mode, struct fuse_file_info *fi) {
    if (fi != NULL)
        return err(fchmod((int)fi->fh, mode));
    return err(fchmodat(source_fd, rel(path), mode, 0));
}

static int nl_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi) {
    if (fi != NULL)
        return err(fchown((int)fi->fh, uid, gid));
    return err(fchownat(source_fd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW));
}

static int nl_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
    if (fi != NULL)
        return err(ftruncate((int)fi->fh, size));
    int fd = openat(source_fd, rel(path), O_WRONLY);
    if (fd < 0)
        return -errno;
    int result = err(ftruncate(fd, size));
    close(fd);
    return result;
}

static int nl_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi) {
    if (fi != NULL)
        return err(futimens((int)fi->fh, tv));
    return err(utimensat(source_fd, rel(path), tv, AT_SYMLINK_NOFOLLOW));
}

static int nl_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
    int fd = openat(source_fd, rel(path), fi->flags, mode);
    if (fd < 0)
        return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int nl_open(const char *path, struct fuse_file_info *fi) {
    int fd = openat(source_fd, rel(path), fi->flags);
    if (fd < 0)
        return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int nl_read(const char *path, char *buf, size_t size, off_t offset,
                   struct fuse_file_info *fi) {
    (void)path;
    ssize_t n = pread((int)fi->fh, buf, size, offset);
    return n < 0 ? -errno : (int)n;
}

static int nl_write(const char *path, const char *buf, size_t size, off_t offset,
                    struct fuse_file_info *fi) {
    (void)path;
    ssize_t n = pwrite((int)fi->fh, buf, size, offset);
    return n < 0 ? -errno : (int)n;
}

static int nl_statfs(const char *path, struct statvfs *st) {
    (void)path;
    return err(fstatvfs(source_fd, st));
}

static int nl_flush(const char *path, struct fuse_file_info *fi) {
    (void)path;
    /* close a duplicate: reports delayed write errors, as close(2) on the source would */
    int fd = dup((int)fi->fh);
    if (fd < 0)
        return -errno;
    return err(close(fd));
}

static int nl_release(const char *path, struct fuse_file_info *fi) {
    (void)path;
    close((int)fi->fh);
    return 0;
}

static int nl_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)path;
    return err(datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh));
}

static int nl_fallocate(const char *path, int mode, off_t offset, off_t length,
                        struct fuse_file_info *fi) {
    (void)path;
    return err(fallocate((int)fi->fh, mode, offset, length));
}

static int nl_lock(const char *path, struct fuse_file_info *fi, int cmd, struct flock *lock) {
    (void)path;
    (void)fi;
    (void)cmd;
    (void)lock;
    return -ENOLCK;
}

static int nl_flock(const char *path, struct fuse_file_info *fi, int op) {
    (void)path;
    (void)fi;
    (void)op;
    return -ENOLCK;
}

static const struct fuse_operations nl_ops = {
    .init = nl_init,
    .getattr = nl_getattr,
    .access = nl_access,
    .readlink = nl_readlink,
    .readdir = nl_readdir,
    .mknod = nl_mknod,
    .mkdir = nl_mkdir,
    .unlink = nl_unlink,
    .rmdir = nl_rmdir,
    .symlink = nl_symlink,
    .rename = nl_rename,
    .link = nl_link,
    .chmod = nl_chmod,
    .chown = nl_chown,
    .truncate = nl_truncate,
    .utimens = nl_utimens,
    .create = nl_create,
    .open = nl_open,
    .read = nl_read,
    .write = nl_write,
    .statfs = nl_statfs,
    .flush = nl_flush,
    .release = nl_release,
    .fsync = nl_fsync,
    .fallocate = nl_fallocate,
    .lock = nl_lock,
    .flock = nl_flock,
};

int main(int argc, char *argv[]) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s SOURCE MOUNTPOINT [FUSE options]\n", argv[0]);
        return 2;
    }
    source_fd = open(argv[1], O_RDONLY | O_DIRECTORY);
    if (source_fd < 0) {
        perror(argv[1]);
        return 1;
    }
    umask(0);
    /* fuse_main sees: program MOUNTPOINT options... */
    argv[1] = argv[0];
    return fuse_main(argc - 1, argv + 1, &nl_ops, NULL);
}

// SPDX-License-Identifier: GPL-2.0-only
/*
 * Tripkey read sensor: who opened a planted file, attributed in the kernel.
 *
 * Opens: the exit tracepoints of the open family turn the returned fd into its struct file
 * (current->files->fdt->fd[fd]) and look (s_dev, i_ino) up in `watched`. Only a match costs more
 * than that lookup: it reserves one ring-buffer record carrying the reader's exe, cwd and argv
 * (read from current, whose memory is mapped right now) and the chain of ancestors as
 * (tgid, start time, uid). Keying on the inode makes hard links, renamed or bind-mounted
 * directories, /proc/self/fd/N re-opens and open_by_handle_at all match.
 *
 * Process cache: exec stores each process's exe and argv under (tgid, start time), fork copies
 * the parent's entry to a new child (threads share their leader's), exit deletes it. A read
 * record only names its ancestors; userspace fetches their exe/argv from this cache. An ancestor
 * named by a read is "pinned": if it exits before userspace has looked, its entry is kept (its
 * exit time set) and userspace deletes it after use, so a shell that runs a reader and exits
 * within a millisecond is still named. pid reuse cannot mix two processes: a new process has a
 * new start time, so a new key.
 *
 * Nothing here ever waits: a full ring buffer or a full cache is counted, never retried.
 *
 * Needs Linux >= 6.1 on x86-64 with BTF: bpf_loop (5.17), tp_btf, bpf_get_current_task_btf and a
 * non-preallocated hash map in tracing programs (6.1).
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "tripkey.h"

char LICENSE[] SEC("license") = "GPL";

/* x86-64 syscall numbers of the open family (the tp_btf fallback filters on them). */
#define NR_OPEN 2
#define NR_CREAT 85
#define NR_OPENAT 257
#define NR_OPEN_BY_HANDLE_AT 304
#define NR_OPENAT2 437

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* only userspace inserts; lookups cost the same */
	__uint(max_entries, 4096);            /* planted files (+ temp files being planted) */
	__type(key, struct tk_file_key);
	__type(value, __u32);
} watched SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* memory follows the live process count */
	__uint(max_entries, 32768);           /* resized by the loader */
	__type(key, struct tk_proc_key);
	__type(value, struct tk_proc);
} procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);         /* resized by the loader */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TK_C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tk_config);
} tk_config SEC(".maps");

/* Per process, what its last full read record was built from: a process opening the file in a
 * loop sends a 56-byte tk_repeat instead of a 6 KiB tk_read while nothing changed (LRU: a
 * process that stops reading ages out; a missing entry only means the next record is full). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct tk_proc_key);
	__type(value, struct tk_last);
} last_full SEC(".maps");

/* A tk_proc is too big for the 512-byte BPF stack: exec builds it in this per-CPU slot. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tk_proc);
} scratch SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *slot = bpf_map_lookup_elem(&counters, &idx);

	if (slot)
		*slot += 1; /* per-CPU: no other writer */
}

/*
 * Task fields are read with direct loads: every task pointer here is BTF-typed (a tp_btf
 * argument or bpf_get_current_task_btf()), so the verifier turns `t->field` into a guarded
 * load of a few ns instead of a bpf_probe_read_kernel call; the read record walks up to
 * TK_MAX_ANC parents, and this is most of its cost. CO-RE relocates these loads like
 * BPF_CORE_READ (vmlinux.h types carry preserve_access_index).
 */

/* The key of a task's process: its thread-group leader's pid and start time. */
static __always_inline struct tk_proc_key proc_key(struct task_struct *task)
{
	struct tk_proc_key key = {};

	key.tgid = task->tgid;
	key.start_ns = task->group_leader->start_boottime;
	return key;
}

/*
 * Path walk, one step per bpf_loop iteration (a plain bounded loop makes the verifier explore every
 * mix of mount crossings and names, past its 1M-instruction budget). Components are written leaf
 * first, each NUL-terminated ("cat\0bin\0usr\0" for /usr/bin/cat); userspace reverses and joins
 * them. Walking up: a dentry that is the root of its mount continues at its mountpoint in the
 * parent mount (struct mount wraps the struct vfsmount a path holds), and the walk ends at the
 * mount that is its own parent: the root of the mount tree, as /proc/<pid>/exe shows it to a
 * process in the initial mount namespace.
 */
struct walk {
	struct dentry *dentry;
	struct mount *mnt;
	struct dentry *mnt_root;
	char *buf;      /* TK_PATH_LEN bytes */
	__u32 off;
	__u32 done;     /* reached the root (or a detached tree) before running out of steps/room */
};

static long walk_step(__u32 i, void *data)
{
	struct walk *w = data;
	/* locals: CO-RE accessors must start from a kernel type, not from our struct walk */
	struct dentry *dentry = w->dentry, *up;
	struct mount *mnt = w->mnt;
	long n;

	if (dentry == w->mnt_root) {
		struct mount *parent = BPF_CORE_READ(mnt, mnt_parent);

		if (parent == mnt || !parent) {
			w->done = 1; /* the root of the tree */
			return 1;
		}
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = parent;
		w->mnt_root = BPF_CORE_READ(parent, mnt.mnt_root);
		return 0;
	}
	up = BPF_CORE_READ(dentry, d_parent);
	if (up == dentry || !up) {
		w->done = 1; /* a detached tree (memfd, pipe, deleted mount): stop at its top */
		return 1;
	}
	if (w->off >= TK_PATH_SPAN)
		return 1; /* out of room: cut */
	n = bpf_probe_read_kernel_str(w->buf + (w->off & (TK_PATH_SPAN - 1)), TK_PATH_SPAN,
				      BPF_CORE_READ(dentry, d_name.name));
	if (n <= 0)
		return 1;
	w->off += n;
	w->dentry = up;
	return 0;
}

/* Write the path of (dentry, vfsmount) into buf; *cut = 1 when it did not fit. Returns bytes used. */
static __always_inline __u32 walk_path(struct dentry *dentry, struct vfsmount *vfsmnt, char *buf, __u32 *cut)
{
	struct walk w = {
		.dentry = dentry,
		.mnt = container_of(vfsmnt, struct mount, mnt),
		.mnt_root = BPF_CORE_READ(vfsmnt, mnt_root),
		.buf = buf,
	};

	bpf_loop(TK_PATH_DEPTH, walk_step, &w, 0);
	if (!w.done)
		*cut = 1;
	return w.off;
}

/*
 * The file behind fd in the current task: current->files->fdt->fd[fd], or NULL. This runs for
 * every successful open on the host, so the task -> fdtable walk uses direct BTF loads (a few
 * ns each) rather than probe-read helper calls; only the fd array slot (a pointer to pointers,
 * which BTF cannot type) needs one.
 */
static __always_inline struct file *fd_file(struct task_struct *task, long fd)
{
	struct fdtable *fdt = task->files->fdt;
	struct file *file = NULL;

	if (fd < 0 || (__u64)fd >= fdt->max_fds)
		return NULL;
	bpf_probe_read_kernel(&file, sizeof(file), &fdt->fd[fd]);
	return file;
}

/* The reader's argv, straight from its own stack (current: the pages are its, mapped now). */
static __always_inline void read_args(struct task_struct *task, char *buf, __u32 cap, __u16 *len, __u32 *total,
				      __u32 *flags)
{
	struct mm_struct *mm = task->mm;
	unsigned long start, end;
	__u64 n; /* 64-bit: a u32 would be zero-extended into a copy the verifier does not tie to n */

	*len = 0;
	*total = 0;
	if (!mm)
		return;
	start = mm->arg_start;
	end = mm->arg_end;
	if (end <= start)
		return;
	n = end - start;
	*total = n > 0xffffffff ? 0xffffffff : n;
	if (n > cap) {
		n = cap;
		*flags |= TK_F_ARGS_CUT;
	}
	/* clang may test a copy of n and pass another to the helper; after the barrier the verifier
	 * sees the very register it is given checked against the buffer size */
	barrier_var(n);
	if (n > cap)
		return;
	if (bpf_probe_read_user(buf, n, (void *)start) < 0) {
		*flags |= TK_F_ARGS_FAULT;
		count(TK_C_ARGS_FAULT);
		return;
	}
	*len = n;
}

static __always_inline __u16 exe_of(struct task_struct *task, char *buf, __u32 *flags)
{
	struct mm_struct *mm = task->mm;
	struct file *exe = mm ? mm->exe_file : NULL;
	__u32 cut = 0, len;

	if (!exe) {
		*flags |= TK_F_NO_EXE;
		return 0;
	}
	struct dentry *dentry = exe->f_path.dentry;

	/* an unlinked dentry is unhashed (d_hash.pprev == NULL): /proc appends " (deleted)" */
	if (!dentry->d_hash.pprev)
		*flags |= TK_F_EXE_DELETED;
	len = walk_path(dentry, exe->f_path.mnt, buf, &cut);
	if (cut)
		*flags |= TK_F_EXE_CUT;
	return len;
}

/* ---- process cache ------------------------------------------------------------------------ */

SEC("tp_btf/sched_process_exec")
int BPF_PROG(tk_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 zero = 0;
	struct tk_proc *e = bpf_map_lookup_elem(&scratch, &zero);
	struct tk_proc_key key = proc_key(p);
	struct tk_proc *old;

	if (!e)
		return 0;
	count(TK_C_EXEC);
	e->exec_ns = bpf_ktime_get_boot_ns();
	e->exit_ns = 0;
	e->flags = 0;
	e->ppid = p->group_leader->real_parent->tgid;
	/* a process re-executing keeps its pin: a read record may already name it */
	old = bpf_map_lookup_elem(&procs, &key);
	e->pinned = old ? old->pinned : 0;
	e->exe_len = exe_of(p, e->exe, &e->flags);
	read_args(p, e->args, TK_CACHE_ARGS_LEN, &e->args_len, &e->args_total, &e->flags);
	if (bpf_map_update_elem(&procs, &key, e, BPF_ANY) < 0)
		count(TK_C_CACHE_FULL);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(tk_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 zero = 0;
	struct tk_proc_key pkey, ckey = {};
	struct tk_proc *pe, *e;

	/* threads fire this too; only a new thread group is a new process */
	if (child->pid != child->tgid)
		return 0;
	count(TK_C_FORK);
	/* the child may already have run and exited (this fires after it was woken): no entry for it,
	 * its exit has passed. A narrower race is left to userspace's periodic sweep. */
	if (child->exit_state)
		return 0;
	pkey = proc_key(parent);
	pe = bpf_map_lookup_elem(&procs, &pkey);
	if (!pe) {
		count(TK_C_FORK_UNKNOWN); /* parent predates us: the child is filled from /proc if needed */
		return 0;
	}
	e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 0;
	/* the child runs the parent's image until it execs: same exe, same argv */
	bpf_probe_read_kernel(e, sizeof(*e), pe);
	e->flags |= TK_F_FORKED;
	e->pinned = 0;
	e->exit_ns = 0;
	e->ppid = parent->tgid;
	ckey.tgid = child->tgid;
	ckey.start_ns = child->start_boottime;
	if (bpf_map_update_elem(&procs, &ckey, e, BPF_ANY) < 0)
		count(TK_C_CACHE_FULL);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(tk_exit, struct task_struct *p)
{
	struct tk_proc_key key;
	struct tk_proc *e;

	/* every thread fires this; the process is gone when the last one leaves: do_exit() drops
	 * signal->live before this tracepoint, so 0 here means the whole thread group is dead */
	if (p->signal->live.counter != 0)
		return 0;
	key = proc_key(p);
	e = bpf_map_lookup_elem(&procs, &key);
	if (!e)
		return 0;
	count(TK_C_EXIT);
	/* Plain stores, no atomics: `pinned` is only ever set to 1 and exit_ns only written here.
	 * A pin racing with this exit may be missed: then the entry goes and userspace counts a
	 * miss for that ancestor, never a wrong name. */
	if (e->pinned) {
		e->exit_ns = bpf_ktime_get_boot_ns();
		count(TK_C_KEPT);
		return 0;
	}
	bpf_map_delete_elem(&procs, &key);
	return 0;
}

/* ---- opens ------------------------------------------------------------------------------- */

/*
 * The reader's ancestors up to pid 1, parent first, one per bpf_loop step (unrolled, 32 levels
 * of branches took the verifier ~2 s per program). Each is named by (tgid, start time) as the
 * live task shows it now, plus the exec stamp of its cache entry; the entry is pinned so that
 * its exit does not delete it before userspace has read it.
 */
struct anc_walk {
	struct task_struct *t;
	struct tk_read *r;
	__u32 n;
	__u32 done; /* reached pid 1 (or the idle task) */
};

static long anc_step(__u32 i, void *data)
{
	struct anc_walk *w = data;
	struct task_struct *t = w->t;
	struct tk_read *r = w->r;
	struct tk_proc_key key;
	struct tk_proc *e;

	__u64 k = i; /* 64-bit and opaque to clang: the bound is checked on the register that indexes */

	barrier_var(k);
	if (!t || k >= TK_MAX_ANC) {
		w->done = !t;
		return 1;
	}
	key = proc_key(t);
	if (key.tgid == 0) { /* the idle task: above pid 1 and kthreadd */
		w->done = 1;
		return 1;
	}
	r->anc[k].tgid = key.tgid;
	r->anc[k].start_ns = key.start_ns;
	r->anc[k].uid = t->real_cred->uid.val;
	r->anc[k].exec_ns = 0;
	e = bpf_map_lookup_elem(&procs, &key);
	if (e) {
		r->anc[k].exec_ns = e->exec_ns;
		if (!e->pinned)
			e->pinned = 1;
	} else {
		count(TK_C_ANC_MISS);
	}
	w->n = k + 1;
	if (key.tgid == 1) {
		w->done = 1;
		return 1;
	}
	w->t = t->group_leader->real_parent;
	return 0;
}

static __always_inline void fill_ancestors(struct task_struct *leader, struct tk_read *r)
{
	struct anc_walk w = { .t = leader->real_parent, .r = r };

	bpf_loop(TK_MAX_ANC, anc_step, &w, 0);
	r->n_anc = w.n;
	if (!w.done)
		r->flags |= TK_F_ANC_CUT;
}

static __always_inline bool is_agent(__u32 tgid)
{
	__u32 zero = 0;
	struct tk_config *cfg = bpf_map_lookup_elem(&tk_config, &zero);

	if (cfg && cfg->agent_tgid == tgid) {
		count(TK_C_OWN);
		return true;
	}
	return false;
}

/* What a full record of this open would be built from (pointers compared, never followed). */
static __always_inline void snapshot(struct task_struct *task, struct task_struct *leader,
				     struct tk_file_key *fkey, struct tk_last *now)
{
	struct task_struct *parent = leader->real_parent;
	struct mm_struct *mm = task->mm;

	now->ino = fkey->ino;
	now->dev = fkey->dev;
	now->pwd_dentry = (__u64)task->fs->pwd.dentry;
	now->pwd_mnt = (__u64)task->fs->pwd.mnt;
	now->parent = (__u64)parent;
	now->parent_mm = (__u64)parent->mm;
	now->mm = (__u64)mm;
	now->arg_start = mm ? mm->arg_start : 0;
	now->arg_end = mm ? mm->arg_end : 0;
	now->uid = task->real_cred->uid.val;
}

/* A repeat: the same process opens the same file with the same cwd, argv area, uid, parent
 * and parent image as in its last full record, sent less than TK_REPEAT_WINDOW_NS ago. What a
 * repeat cannot see (argv rewritten in place, a grandparent replaced) is at most a second old. */
static __always_inline bool same_as_last(struct tk_last *last, struct tk_last *now, __u64 t)
{
	return t - last->seq < TK_REPEAT_WINDOW_NS && last->ino == now->ino && last->dev == now->dev &&
	       last->pwd_dentry == now->pwd_dentry && last->pwd_mnt == now->pwd_mnt &&
	       last->parent == now->parent && last->parent_mm == now->parent_mm && last->mm == now->mm &&
	       last->arg_start == now->arg_start && last->arg_end == now->arg_end && last->uid == now->uid;
}

static __always_inline int report_repeat(struct task_struct *task, struct tk_proc_key *pkey,
					 struct tk_last *last, __u64 t, __u32 source)
{
	struct tk_repeat *rp = bpf_ringbuf_reserve(&events, sizeof(*rp), 0);

	if (!rp) {
		count(TK_C_LOST);
		return 0;
	}
	rp->kind = TK_REC_REPEAT;
	rp->source = source;
	rp->time_ns = t;
	rp->start_ns = pkey->start_ns;
	rp->ino = last->ino;
	rp->seq = last->seq;
	rp->dev = last->dev;
	rp->tgid = pkey->tgid;
	rp->tid = task->pid;
	rp->pad = 0;
	count(TK_C_READS);
	count(TK_C_REPEATS);
	bpf_ringbuf_submit(rp, 0);
	return 1;
}

/* The reader is current; `file` is what it just opened. Report it if its inode is watched:
 * returns 1 when a record was submitted. */
static __always_inline int report_file(struct task_struct *task, struct file *file, __u32 source)
{
	struct tk_file_key fkey = {};
	struct task_struct *leader;
	struct tk_last now = {}, *last;
	struct tk_proc_key pkey;
	struct tk_proc *own;
	struct inode *inode;
	struct tk_read *r;
	__u32 cut = 0;
	__u64 t;

	inode = BPF_CORE_READ(file, f_inode);
	fkey.ino = BPF_CORE_READ(inode, i_ino);
	fkey.dev = BPF_CORE_READ(inode, i_sb, s_dev);
	if (!bpf_map_lookup_elem(&watched, &fkey))
		return 0; /* every other open on the host ends here */

	t = bpf_ktime_get_boot_ns();
	leader = task->group_leader;
	pkey = proc_key(task);
	snapshot(task, leader, &fkey, &now);
	last = bpf_map_lookup_elem(&last_full, &pkey);
	if (last && same_as_last(last, &now, t))
		return report_repeat(task, &pkey, last, t, source);

	r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count(TK_C_LOST);
		return 0;
	}
	r->kind = TK_REC_READ;
	r->time_ns = t;
	r->seq = t;
	r->start_ns = pkey.start_ns;
	r->dev = fkey.dev;
	r->ino = fkey.ino;
	r->tgid = pkey.tgid;
	r->tid = task->pid;
	r->ppid = leader->real_parent->tgid;
	r->uid = now.uid;
	r->source = source;
	r->flags = 0;
	r->pad = 0;

	/* exe: the cached copy from exec time when there is one, else walk mm->exe_file now */
	own = bpf_map_lookup_elem(&procs, &pkey);
	if (own) {
		r->exec_ns = own->exec_ns;
		r->flags |= TK_F_EXE_CACHED | (own->flags & (TK_F_EXE_CUT | TK_F_EXE_DELETED));
		r->exe_len = own->exe_len;
		bpf_probe_read_kernel(r->exe, sizeof(r->exe), own->exe);
	} else {
		r->exec_ns = 0;
		count(TK_C_READER_MISS);
		r->exe_len = exe_of(task, r->exe, &r->flags);
	}
	if (task->fs) { /* an empty walk is the root directory itself */
		r->cwd_len = walk_path(task->fs->pwd.dentry, task->fs->pwd.mnt, r->cwd, &cut);
		if (cut)
			r->flags |= TK_F_CWD_CUT;
	} else {
		r->cwd_len = 0;
		r->flags |= TK_F_NO_CWD;
	}
	read_args(task, r->args, TK_ARGS_LEN, &r->args_len, &r->args_total, &r->flags);
	fill_ancestors(leader, r);
	count(TK_C_READS);
	bpf_ringbuf_submit(r, 0);
	/* only now: a repeat must never refer to a record that was not sent */
	now.seq = t;
	bpf_map_update_elem(&last_full, &pkey, &now, BPF_ANY);
	return 1;
}

/* An open-family syscall returned `ret`: on success it is the new fd in current's table. */
static __always_inline int on_open(long ret, __u32 source)
{
	struct task_struct *task;
	struct file *file;

	if (ret < 0 || is_agent(bpf_get_current_pid_tgid() >> 32))
		return 0;
	task = bpf_get_current_task_btf();
	file = fd_file(task, ret);
	if (!file)
		return 0;
	return report_file(task, file, source);
}

static __always_inline bool is_open_nr(long nr)
{
	return nr == NR_OPENAT || nr == NR_OPENAT2 || nr == NR_OPEN || nr == NR_CREAT ||
	       nr == NR_OPEN_BY_HANDLE_AT;
}

/*
 * Classic syscall tracepoints: each fires only for its own syscall (libbpf needs tracefs to find
 * their ids). One program, attached by the loader to sys_exit_{openat,openat2,open,creat,
 * open_by_handle_at}: every sys_exit tracepoint has this context, with the syscall number in id.
 * It returns 0: for this program type a non-zero return also submits the perf sample.
 */
SEC("tracepoint")
int tk_sys_exit_open(struct trace_event_raw_sys_exit *ctx)
{
	on_open(ctx->ret, ctx->id);
	return 0;
}

/* Fallback when tracefs is unavailable: the raw sys_exit tracepoint (no tracefs needed), which
 * runs for every syscall, so it returns at once unless the syscall is one of the open family. */
SEC("tp_btf/sys_exit")
int BPF_PROG(tk_sys_exit, struct pt_regs *regs, long ret)
{
	long nr = BPF_CORE_READ(regs, orig_ax);
	if (!is_open_nr(nr))
		return 0;
	/* a 32-bit (ia32) syscall has other numbers: 257 there is not openat (TS_COMPAT = 0x2) */
	if (bpf_get_current_task_btf()->thread_info.status & 0x2)
		return 0;
	on_open(ret, nr);
	return 0;
}

/* io_uring: IORING_OP_OPENAT[2] completions. The cqe's res is the new fd, installed in the ring
 * owner's table, which current (the submitter, or an io-wq/sqpoll thread of its process) shares.
 * A direct open (into the ring's fixed-file table) has no fd: counted, not resolved. */
SEC("tp_btf/io_uring_complete")
int BPF_PROG(tk_iouring_complete, void *ring, void *req, struct io_uring_cqe *cqe)
{
	struct io_kiocb *kreq = req;
	__u8 op = BPF_CORE_READ(kreq, opcode);

	if (op != IORING_OP_OPENAT && op != IORING_OP_OPENAT2)
		return 0;
	/* the request's command area holds a struct io_open for these opcodes */
	if (BPF_CORE_READ((struct io_open *)kreq, file_slot)) {
		count(TK_C_IOURING_DIRECT);
		return 0;
	}
	if (on_open(BPF_CORE_READ(cqe, res), TK_SRC_IOURING | op))
		count(TK_C_IOURING);
	return 0;
}

/* Optional stronger hook, loaded only where the kernel allows BPF LSM (refused under lockdown on the
 * development host): file_open sees every open as it happens, including io_uring direct opens,
 * which no syscall tracepoint sees. Opens made by an open-family syscall are left to its exit
 * tracepoint (which reports them with the fd), so nothing is reported twice. Never denies. */
SEC("lsm/file_open")
int BPF_PROG(tk_lsm_file_open, struct file *file)
{
	struct task_struct *task = bpf_get_current_task_btf();
	long nr = BPF_CORE_READ((struct pt_regs *)bpf_task_pt_regs(task), orig_ax);

	if (is_open_nr(nr) || is_agent(bpf_get_current_pid_tgid() >> 32))
		return 0;
	report_file(task, file, TK_SRC_LSM | (nr & 0xffff));
	return 0;
}

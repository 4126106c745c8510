package changes

import "testing"

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestPublishWakesOnlyItsSubject(t *testing.T) {
	f := New()
	a, releaseA := f.Watch(Subject("Demo", "secrets", "A"))
	b, releaseB := f.Watch(Subject("demo", "secrets", "b"))
	a2, releaseA2 := f.Watch(Subject("demo", "secrets", "a"))
	if f.Watching() != 2 {
		t.Fatalf("watching %d subjects, want 2", f.Watching())
	}
	f.Publish(Subject("demo", "secrets", "a"), Subject("demo", "keys", "b"))
	if !closed(a) || !closed(a2) || closed(b) {
		t.Fatalf("after publishing a: a %v, a2 %v, b %v", closed(a), closed(a2), closed(b))
	}
	// A new watch of a published subject waits for the next change.
	again, releaseAgain := f.Watch(Subject("demo", "secrets", "a"))
	if closed(again) {
		t.Fatal("a watch made after a publish is already woken")
	}
	releaseA()
	releaseA() // twice is harmless
	releaseA2()
	releaseAgain()
	releaseB()
	if f.Watching() != 0 {
		t.Fatalf("%d subjects left after every release", f.Watching())
	}
}

func TestCloseWakesEveryone(t *testing.T) {
	f := New()
	a, release := f.Watch(Subject("demo", "secrets", "a"))
	defer release()
	f.Close()
	if !closed(a) || !f.Closed() {
		t.Fatal("Close did not wake a watcher")
	}
	later, releaseLater := f.Watch(Subject("demo", "secrets", "a"))
	defer releaseLater()
	if !closed(later) || f.Watching() != 0 {
		t.Fatal("a watch after Close waits")
	}
}

// recorder is a Follower that keeps what it was told.
type recorder struct {
	changed  []string
	rechecks []bool
}

func (r *recorder) Changed(subject string) { r.changed = append(r.changed, subject) }
func (r *recorder) Recheck(all bool)       { r.rechecks = append(r.rechecks, all) }

// A follower is told of writes to its subjects only, of access changes,
// and of gaps, until it stops; Watching counts what it follows.
func TestFollow(t *testing.T) {
	f := New()
	var a, b recorder
	stopA := f.Follow(&a, Subject("demo", "secrets", "x"), Subject("demo", "secrets", "y"))
	stopB := f.Follow(&b, Subject("demo", "secrets", "x"))
	held, release := f.Watch(Subject("demo", "secrets", "x"))
	defer release()
	if n := f.Watching(); n != 2 {
		t.Fatalf("watching %d subjects, want 2 (x, held and followed, counts once)", n)
	}
	if followers, subs := f.Following(); followers != 2 || subs != 3 {
		t.Fatalf("following: %d followers of %d subjects, want 2 and 3", followers, subs)
	}
	f.Publish(Subject("Demo", "secrets", "Y"), Subject("demo", "secrets", "z"))
	f.Publish(Subject("demo", "secrets", "x"))
	if len(a.changed) != 2 || a.changed[0] != Subject("demo", "secrets", "y") || len(b.changed) != 1 || !closed(held) {
		t.Fatalf("a told %v, b told %v, held woken %v", a.changed, b.changed, closed(held))
	}
	f.AccessChanged()
	f.PublishAll()
	if len(a.rechecks) != 2 || a.rechecks[0] || !a.rechecks[1] {
		t.Fatalf("a rechecked %v, want [false true]", a.rechecks)
	}
	stopA()
	stopA() // idempotent
	f.Publish(Subject("demo", "secrets", "y"), Subject("demo", "secrets", "x"))
	f.AccessChanged()
	if len(a.changed) != 2 || len(a.rechecks) != 2 || len(b.changed) != 2 {
		t.Fatalf("after stopping: a told %v and %v, b told %v", a.changed, a.rechecks, b.changed)
	}
	stopB()
	if followers, subs := f.Following(); followers != 0 || subs != 0 || f.Watching() != 0 {
		t.Fatalf("after both stopped: %d followers of %d subjects, %d watched", followers, subs, f.Watching())
	}
	f.Close()
	if !closed(f.Done()) {
		t.Fatal("Close did not close Done")
	}
	f.Close() // idempotent
}

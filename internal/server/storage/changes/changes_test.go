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

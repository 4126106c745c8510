package provider

import (
	"container/list"
	"sync"
)

// lru is a map bounded by the bytes its values account for, least
// recently used first out. A value over a quarter of the bound is not
// kept: it would push out too much to be worth it.
type lru[V any] struct {
	mu    sync.Mutex
	max   int
	used  int
	items map[string]*list.Element
	order *list.List
}

type lruItem[V any] struct {
	key  string
	val  V
	size int
}

func newLRU[V any](max int) *lru[V] {
	return &lru[V]{max: max, items: map[string]*list.Element{}, order: list.New()}
}

func (l *lru[V]) get(key string) (V, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if el, ok := l.items[key]; ok {
		l.order.MoveToFront(el)
		return el.Value.(*lruItem[V]).val, true
	}
	var zero V
	return zero, false
}

// put stores val under key. A value too big to keep still removes the
// key's old value, which is no longer the newest.
func (l *lru[V]) put(key string, val V, size int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.deleteLocked(key)
	if size > l.max/4 {
		return
	}
	l.items[key] = l.order.PushFront(&lruItem[V]{key: key, val: val, size: size})
	l.used += size
	for l.used > l.max {
		el := l.order.Back()
		it := el.Value.(*lruItem[V])
		l.order.Remove(el)
		delete(l.items, it.key)
		l.used -= it.size
	}
}

func (l *lru[V]) delete(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.deleteLocked(key)
}

func (l *lru[V]) deleteLocked(key string) {
	if el, ok := l.items[key]; ok {
		l.used -= el.Value.(*lruItem[V]).size
		l.order.Remove(el)
		delete(l.items, key)
	}
}

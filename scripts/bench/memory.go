package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// memResult is fender's memory idle and under many connections and a full
// cache.
type memResult struct {
	IdleRSSMB   float64 `json:"idle_rss_mb"`
	ConnsRSSMB  float64 `json:"conns_rss_mb"` // the connections open, cache empty
	LoadedRSSMB float64 `json:"loaded_rss_mb"`
	LoadedHWMMB float64 `json:"loaded_peak_rss_mb"`
	Conns       int     `json:"conns"`
	FillOK      int     `json:"fill_ok"`
	Entries     int     `json:"cache_entries"`
}

const fillPad = "Tell me about dragons, their hoards and their habits, in one short line please."

func fillLine(dst []byte, id int64) []byte {
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendInt(dst, id, 10)
	dst = append(dst, `,"upstream":"llm","path":"/v1/x","body":{"model":"phi3","messages":[{"role":"user","content":"`...)
	dst = strconv.AppendInt(dst, id, 10)
	dst = append(dst, ": "+fillPad+`"}],"max_tokens":64}}`+"\n"...)
	return dst
}

func pingLine(dst []byte, id int64) []byte {
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendInt(dst, id, 10)
	return append(dst, `,"op":"ping"}`+"\n"...)
}

// memoryPhase reads fender's VmRSS idle after start, then with memConns open
// connections and memFill distinct cached calls (~240 B answers).
func (b *bench) memoryPhase(ctx context.Context) (memResult, error) {
	progress("  fender memory: idle, then %d connections + %d cache entries", b.o.memConns, b.o.memFill)
	m := memResult{Conns: b.o.memConns}
	p, sock, err := b.startFender(ctx)
	if err != nil {
		return m, err
	}
	defer b.stopFender(p)
	pid := []int{p.PID()}

	conns := make([]*ndWorker, 0, b.o.memConns)
	defer func() {
		for _, c := range conns {
			c.close()
		}
	}()
	for i := range b.o.memConns {
		c, err := dialND(ctx, sock, nil)
		if err != nil {
			return m, fmt.Errorf("connection %d: %w", i+1, err)
		}
		conns = append(conns, c)
		if i == 0 { // idle: started and answered one ping
			if _, err := c.batch([]int64{1}, pingLine); err != nil {
				return m, err
			}
			time.Sleep(300 * time.Millisecond)
			m.IdleRSSMB = round(memMB(pid, "VmRSS"), 1)
		}
	}
	for _, c := range conns[1:] {
		if _, err := c.batch([]int64{1}, pingLine); err != nil {
			return m, fmt.Errorf("ping: %w", err)
		}
	}

	time.Sleep(300 * time.Millisecond)
	m.ConnsRSSMB = round(memMB(pid, "VmRSS"), 1)

	// Fill: call id k goes to connection k mod memConns, fillConns
	// connections at a time, each pipelining its calls.
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, b.o.fillConns)
	)
	for i, c := range conns {
		var ids []int64
		for k := i + 1; k <= b.o.memFill; k += len(conns) {
			ids = append(ids, int64(k))
		}
		if len(ids) == 0 {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			n, err := c.batch(ids, fillLine)
			mu.Lock()
			m.FillOK += n
			errs = append(errs, err)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return m, fmt.Errorf("fill: %w", err)
	}
	if m.Entries, err = cacheEntries(conns[0]); err != nil {
		return m, err
	}
	if m.FillOK != b.o.memFill || m.Entries < b.o.memFill {
		b.note("memory: %d of %d fill calls ok, %d cache entries", m.FillOK, b.o.memFill, m.Entries)
	}
	time.Sleep(300 * time.Millisecond)
	m.LoadedRSSMB = round(memMB(pid, "VmRSS"), 1)
	m.LoadedHWMMB = round(memMB(pid, "VmHWM"), 1)
	return m, nil
}

// cacheEntries asks fender's stats op for stats.cache_entries.
func cacheEntries(c *ndWorker) (int, error) {
	if _, err := c.c.Write([]byte(`{"id":"stats","op":"stats"}` + "\n")); err != nil {
		return 0, err
	}
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	var a struct {
		Stats struct {
			CacheEntries int `json:"cache_entries"`
		} `json:"stats"`
	}
	if err := json.Unmarshal(line, &a); err != nil {
		return 0, fmt.Errorf("stats answer: %.300s", line)
	}
	return a.Stats.CacheEntries, nil
}

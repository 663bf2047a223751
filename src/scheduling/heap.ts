/** A binary min-heap; `before(a, b)` is true when a must come out first. O(log n) push/pop. */
export class Heap<T> {
  private readonly items: T[] = [];

  constructor(private readonly before: (a: T, b: T) => boolean) {}

  get size(): number {
    return this.items.length;
  }

  peek(): T | undefined {
    return this.items[0];
  }

  push(item: T): void {
    this.items.push(item);
    this.rise(this.items.length - 1);
  }

  pop(): T | undefined {
    const a = this.items;
    const top = a[0];
    const last = a.pop();
    if (a.length && last !== undefined) {
      a[0] = last;
      this.sink(0);
    }
    return top;
  }

  /** Removes one item (by identity); O(n) to find it, for the rare cancellation path. */
  remove(item: T): boolean {
    const a = this.items;
    const i = a.indexOf(item);
    if (i < 0) return false;
    const last = a.pop()!;
    if (i < a.length) {
      a[i] = last;
      this.sink(i);
      this.rise(i);
    }
    return true;
  }

  private rise(i: number): void {
    const a = this.items;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(a[i]!, a[p]!)) break;
      [a[i], a[p]] = [a[p]!, a[i]!];
      i = p;
    }
  }

  private sink(i: number): void {
    const a = this.items;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < a.length && this.before(a[l]!, a[m]!)) m = l;
      if (r < a.length && this.before(a[r]!, a[m]!)) m = r;
      if (m === i) return;
      [a[i], a[m]] = [a[m]!, a[i]!];
      i = m;
    }
  }
}
